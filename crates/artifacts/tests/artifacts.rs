//! Integration tests of mosr-artifacts (one file: each test binary links arrow + parquet).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, LargeListBuilder, LargeStringArray,
    RecordBatch, StringArray, StringBuilder, StringViewArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use mosr_artifacts::tables::{CAPABILITY, JUDGE_LABELS, PROMPTS};
use mosr_artifacts::{
    CapabilityRow, Error, JudgeLabelRow, PromptRow, Role, RunDir, Split, StageManifest,
    read_capability, read_judge_labels, read_prompts, sha256_bytes, sha256_file, stage_key,
    write_atomic, write_bytes_atomic, write_capability, write_judge_labels, write_parquet,
    write_prompts,
};

fn tmp(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("mosr-artifacts-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn prompt(id: &str, role: Role, split: Split) -> PromptRow {
    PromptRow {
        id: id.into(),
        text: format!("text of {id}\nwith a second line"),
        source: "unit".into(),
        source_version: "unit==1.0".into(),
        role,
        split,
        category: Some("cat".into()),
        subset: None,
        pair_id: None,
        source_path: Some("a/b.txt".into()),
        source_index: Some(7),
        meta: Some(r#"{"k":[1,2]}"#.into()),
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn atomic_write_replaces_and_leaves_no_temp() {
    let dir = tmp("atomic");
    let path = dir.join("sub/out.txt");
    write_bytes_atomic(&path, b"one").unwrap();
    write_bytes_atomic(&path, b"two").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    assert!(leftovers(&dir.join("sub")).is_empty());

    // A failing writer leaves neither the target nor a temporary behind.
    let bad = dir.join("sub/bad.txt");
    let err = write_atomic(&bad, |_f| -> mosr_artifacts::Result<()> {
        Err(Error::Io {
            path: bad.clone(),
            source: std::io::Error::other("boom"),
        })
    });
    assert!(err.is_err());
    assert!(!bad.exists());
    assert!(leftovers(&dir.join("sub")).is_empty());
}

#[test]
fn sha256_known_value() {
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(sha256_bytes(b"abc"), abc);
    let dir = tmp("sha");
    write_bytes_atomic(&dir.join("f"), b"abc").unwrap();
    assert_eq!(sha256_file(&dir.join("f")).unwrap(), abc);
}

#[test]
fn prompts_round_trip() {
    let dir = tmp("prompts");
    let path = dir.join("prompts.parquet");
    let mut rows = vec![
        prompt("a-1", Role::Harmful, Split::Train),
        prompt("a-2", Role::OverrefusalSafe, Split::Test),
        prompt("a-3", Role::JailbreakFutureTense, Split::Dev),
    ];
    rows[1].category = None;
    rows[1].pair_id = Some("a-3".into());
    rows[2].source_index = None;
    rows[2].meta = None;
    write_prompts(&path, &rows).unwrap();
    assert_eq!(read_prompts(&path).unwrap(), rows);
    assert!(leftovers(&dir).is_empty());
}

#[test]
fn capability_and_judge_round_trip() {
    let dir = tmp("cap");
    let cap = vec![
        CapabilityRow {
            id: "mmlu-x-test-0001".into(),
            benchmark: "mmlu".into(),
            subject: Some("x".into()),
            split: "test".into(),
            question: "Q?".into(),
            choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            answer_index: Some(2),
            answer: "c".into(),
            source_version: "p==1".into(),
            meta: None,
        },
        CapabilityRow {
            id: "gsm8k-0".into(),
            benchmark: "gsm8k".into(),
            subject: None,
            split: "test".into(),
            question: "How many?".into(),
            choices: vec![],
            answer_index: None,
            answer: "18".into(),
            source_version: "p==1".into(),
            meta: Some(r#"{"solution":"..."}"#.into()),
        },
    ];
    write_capability(&dir.join("capability.parquet"), &cap).unwrap();
    assert_eq!(
        read_capability(&dir.join("capability.parquet")).unwrap(),
        cap
    );

    let judge = vec![JudgeLabelRow {
        id: "j-001".into(),
        prompt: "p".into(),
        response: "I'm sorry, I can't.".into(),
        refusal: true,
        source: "j".into(),
        source_version: "p==1".into(),
    }];
    write_judge_labels(&dir.join("j.parquet"), &judge).unwrap();
    assert_eq!(read_judge_labels(&dir.join("j.parquet")).unwrap(), judge);
}

/// Polars writes Utf8View/LargeUtf8 strings and LargeList lists; readers must take them.
#[test]
fn reader_accepts_view_and_large_encodings() {
    let dir = tmp("enc");
    let view = |v: Vec<&str>| -> ArrayRef { Arc::new(StringViewArray::from(v)) };
    let large = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(LargeStringArray::from(v)) };
    let fields: Vec<Field> = PROMPTS
        .columns
        .iter()
        .map(|c| {
            let dt = match c.name {
                "id" | "text" | "source" | "source_version" | "role" | "split" => {
                    DataType::Utf8View
                }
                "source_index" => DataType::Int64,
                _ => DataType::LargeUtf8,
            };
            Field::new(c.name, dt, c.nullable)
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        view(vec!["x-1"]),
        view(vec!["hello"]),
        view(vec!["x"]),
        view(vec!["x==1"]),
        view(vec!["benign"]),
        view(vec!["dev"]),
        large(vec![Some("c")]),
        large(vec![None]),
        large(vec![None]),
        large(vec![Some("f.txt")]),
        Arc::new(Int64Array::from(vec![Some(3)])),
        large(vec![None]),
    ];
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = dir.join("view.parquet");
    write_parquet(&path, schema, &[batch]).unwrap();
    let rows = read_prompts(&path).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].role, Role::Benign);
    assert_eq!(rows[0].split, Split::Dev);
    assert_eq!(rows[0].category.as_deref(), Some("c"));

    // Capability with LargeList<LargeUtf8> choices and Utf8View strings.
    let mut choices = LargeListBuilder::new(StringBuilder::new());
    choices.values().append_value("a");
    choices.values().append_value("b");
    choices.append(true);
    let cfields: Vec<Field> = CAPABILITY
        .columns
        .iter()
        .map(|c| {
            let dt = match c.name {
                "choices" => {
                    DataType::LargeList(Arc::new(Field::new("item", DataType::Utf8, true)))
                }
                "answer_index" => DataType::Int32,
                _ => DataType::Utf8View,
            };
            Field::new(c.name, dt, true)
        })
        .collect();
    let ccols: Vec<ArrayRef> = vec![
        view(vec!["m-1"]),
        view(vec!["mmlu"]),
        view(vec!["s"]),
        view(vec!["test"]),
        view(vec!["q"]),
        Arc::new(choices.finish()),
        Arc::new(Int32Array::from(vec![1])),
        view(vec!["b"]),
        view(vec!["p==1"]),
        view(vec!["{}"]),
    ];
    let cschema = Arc::new(Schema::new(cfields));
    let path = dir.join("cap_view.parquet");
    write_parquet(
        &path,
        cschema.clone(),
        &[RecordBatch::try_new(cschema, ccols).unwrap()],
    )
    .unwrap();
    let cap = read_capability(&path).unwrap();
    assert_eq!(cap[0].choices, vec!["a", "b"]);
    assert_eq!(cap[0].answer_index, Some(1));
}

/// A file written by Python polars (`tests/fixtures/make_polars_fixture.py`), committed so
/// the test needs no Python.
#[test]
fn reads_polars_written_prompts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/polars_prompts.parquet");
    let rows = read_prompts(&path).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].id, "p-1");
    assert_eq!(rows[1].role, Role::PseudoMalicious);
    assert_eq!(rows[1].source_index, None);
    let cap = read_capability(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/polars_capability.parquet"),
    )
    .unwrap();
    assert_eq!(cap[0].choices, vec!["1", "2", "3", "4"]);
    assert_eq!(cap[1].choices, Vec::<String>::new());
}

fn schema_err(e: Error) -> (PathBuf, String, String) {
    match e {
        Error::Schema {
            path,
            column,
            reason,
            ..
        } => (path, column, reason),
        other => panic!("expected a schema error, got {other}"),
    }
}

#[test]
fn schema_errors_name_file_and_column() {
    let dir = tmp("schema");
    // Missing column: a judge-labels file without `refusal`.
    let fields: Vec<Field> = JUDGE_LABELS
        .columns
        .iter()
        .filter(|c| c.name != "refusal")
        .map(|c| Field::new(c.name, DataType::Utf8, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let cols: Vec<ArrayRef> = (0..5)
        .map(|_| Arc::new(StringArray::from(vec!["v"])) as ArrayRef)
        .collect();
    let path = dir.join("missing.parquet");
    write_parquet(
        &path,
        schema.clone(),
        &[RecordBatch::try_new(schema, cols).unwrap()],
    )
    .unwrap();
    let (p, col, reason) = schema_err(read_judge_labels(&path).unwrap_err());
    assert_eq!(
        (p, col.as_str(), reason.as_str()),
        (path.clone(), "refusal", "missing column")
    );
    let msg = read_judge_labels(&path).unwrap_err().to_string();
    assert!(
        msg.contains("missing.parquet") && msg.contains("`refusal`"),
        "{msg}"
    );

    // Wrong type: `refusal` as a string.
    let fields: Vec<Field> = JUDGE_LABELS
        .columns
        .iter()
        .map(|c| Field::new(c.name, DataType::Utf8, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let cols: Vec<ArrayRef> = (0..6)
        .map(|_| Arc::new(StringArray::from(vec!["v"])) as ArrayRef)
        .collect();
    let path = dir.join("type.parquet");
    write_parquet(
        &path,
        schema.clone(),
        &[RecordBatch::try_new(schema, cols).unwrap()],
    )
    .unwrap();
    let (_, col, reason) = schema_err(read_judge_labels(&path).unwrap_err());
    assert_eq!(col, "refusal");
    assert!(reason.contains("not accepted"), "{reason}");

    // Nulls in a required column.
    let fields: Vec<Field> = JUDGE_LABELS
        .columns
        .iter()
        .map(|c| {
            let dt = if c.name == "refusal" {
                DataType::Boolean
            } else {
                DataType::Utf8
            };
            Field::new(c.name, dt, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let s = |v: Option<&str>| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let cols: Vec<ArrayRef> = vec![
        s(Some("id")),
        s(None),
        s(Some("r")),
        Arc::new(BooleanArray::from(vec![Some(true)])),
        s(Some("s")),
        s(Some("v")),
    ];
    let path = dir.join("nulls.parquet");
    write_parquet(
        &path,
        schema.clone(),
        &[RecordBatch::try_new(schema, cols).unwrap()],
    )
    .unwrap();
    let (_, col, reason) = schema_err(read_judge_labels(&path).unwrap_err());
    assert_eq!(col, "prompt");
    assert!(reason.contains("nulls"), "{reason}");

    // A role outside the vocabulary.
    let mut bad = prompt("b-1", Role::Benign, Split::Train);
    bad.id = "b-1".into();
    let path = dir.join("role.parquet");
    write_prompts(&path, &[bad]).unwrap();
    let (_, batches) = mosr_artifacts::read_parquet_raw(&path).unwrap();
    let b = &batches[0];
    let mut cols: Vec<ArrayRef> = b.columns().to_vec();
    let role_idx = b.schema().index_of("role").unwrap();
    cols[role_idx] = Arc::new(StringArray::from(vec!["villain"]));
    let b2 = RecordBatch::try_new(b.schema(), cols).unwrap();
    write_parquet(&path, b.schema(), &[b2]).unwrap();
    let (_, col, reason) = schema_err(read_prompts(&path).unwrap_err());
    assert_eq!(col, "role");
    assert!(reason.contains("villain"), "{reason}");
}

#[test]
fn manifest_round_trip_and_time_format() {
    let dir = tmp("manifest");
    let mut m = StageManifest::new("data", serde_json::json!({"seed": 1, "a": [1, 2]}));
    m.inputs.insert("x".into(), "abc".into());
    m.seed = Some(1);
    m.row_counts.insert("prompts".into(), 10);
    m.wall_time_s = 1.5;
    let path = dir.join("manifest.json");
    m.write(&path).unwrap();
    assert_eq!(StageManifest::read(&path).unwrap(), m);
    assert!(
        ["amx-f32-exact", "avx512", "portable"].contains(&m.cpu_arithmetic.as_str()),
        "{}",
        m.cpu_arithmetic
    );
    // Manifests written before the field existed still read (the field is empty).
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("cpu_arithmetic");
    std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
    assert_eq!(StageManifest::read(&path).unwrap().cpu_arithmetic, "");
    assert_eq!(m.created.len(), 20);
    assert!(m.created.ends_with('Z'));
    assert_eq!(
        mosr_artifacts::manifest::rfc3339_from_unix(0),
        "1970-01-01T00:00:00Z"
    );
    assert_eq!(
        mosr_artifacts::manifest::rfc3339_from_unix(951_782_400 + 3661),
        "2000-02-29T01:01:01Z"
    );
}

#[test]
fn stage_key_and_run_dir() {
    let cfg = serde_json::json!({"b": 1, "a": {"y": 2, "x": 1}});
    let same = serde_json::json!({"a": {"x": 1, "y": 2}, "b": 1});
    let mut inputs = BTreeMap::new();
    inputs.insert("prompts".to_string(), "00ff".to_string());
    let k = stage_key(&cfg, &inputs);
    assert_eq!(k.len(), 16);
    assert_eq!(k, stage_key(&same, &inputs), "key ignores JSON key order");
    inputs.insert("prompts".to_string(), "01ff".to_string());
    assert_ne!(k, stage_key(&cfg, &inputs), "key follows input hashes");

    let dir = tmp("runs");
    let run = RunDir::new(&dir.join("runs"), "smoke");
    assert_eq!(run.stage_dir("probe"), dir.join("runs/smoke/probe"));
    assert!(!run.is_up_to_date("probe", &k));
    assert!(
        run.manifest("probe")
            .unwrap_err()
            .to_string()
            .contains("has not completed")
    );

    // A killed stage leaves a partial folder that the same key resumes and another key wipes.
    let work = run.begin("probe", &k).unwrap();
    assert!(!work.resumed());
    std::fs::write(work.dir().join("shard-0"), b"x").unwrap();
    drop(work);
    let work = run.begin("probe", &k).unwrap();
    assert!(work.resumed() && work.dir().join("shard-0").is_file());
    let out = work
        .commit(StageManifest::new("probe", serde_json::json!({})))
        .unwrap();
    assert_eq!(out, run.stage_dir("probe"));
    assert!(out.join("shard-0").is_file() && !out.join(".key").exists());
    assert!(run.is_up_to_date("probe", &k));
    assert!(!run.is_up_to_date("probe", "another"));
    let work = run.begin("probe", "another").unwrap();
    assert!(!work.resumed() && !work.dir().join("shard-0").exists());
    work.commit(StageManifest::new("probe", serde_json::json!({})))
        .unwrap();
    assert!(run.is_up_to_date("probe", "another"));
    assert!(
        !run.stage_dir("probe").join("shard-0").exists(),
        "commit replaces the old outputs"
    );

    // Up to date means the key and the outputs: a truncated or deleted output reruns the stage.
    let work = run.begin("probe", &k).unwrap();
    std::fs::write(work.dir().join("scores.parquet"), b"scores").unwrap();
    let mut m = StageManifest::new("probe", serde_json::json!({}));
    m.outputs.insert(
        "scores.parquet".into(),
        mosr_artifacts::sha256_bytes(b"scores"),
    );
    work.commit(m).unwrap();
    assert!(run.is_up_to_date("probe", &k));
    let scores = run.stage_dir("probe").join("scores.parquet");
    std::fs::write(&scores, b"score").unwrap();
    assert!(
        !run.is_up_to_date("probe", &k),
        "a changed output is not up to date"
    );
    let m = run.manifest("probe").unwrap();
    let why = run.changed_output("probe", &m).unwrap();
    assert!(
        why.contains("scores.parquet") && why.contains("its manifest recorded"),
        "{why}"
    );
    std::fs::remove_file(&scores).unwrap();
    let why = run.changed_output("probe", &m).unwrap();
    assert!(why.ends_with("scores.parquet: missing"), "{why}");
}

#[test]
fn schema_docs_cover_every_table() {
    for t in mosr_artifacts::tables::ALL_TABLES {
        let md = t.markdown();
        for c in t.columns {
            assert!(md.contains(&format!("`{}`", c.name)));
        }
    }
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/artifacts.md"),
    )
    .unwrap();
    for t in mosr_artifacts::tables::ALL_TABLES {
        assert!(
            doc.contains(&t.markdown()),
            "docs/artifacts.md is out of date for `{}`; paste TableSchema::markdown()",
            t.name
        );
    }
}

#[derive(Debug, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    #[serde(default)]
    l2: f64,
    #[serde(default)]
    layers: Vec<usize>,
}

#[test]
fn pipeline_errors_name_the_key_and_line() {
    use mosr_artifacts::PipelineFile;
    let dir = tmp("pipelines");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok = write(
        "ok.toml",
        "[run]\nname = \"t\"\nmodel = \"m\"\n\n[probe]\nl2 = 0.5\n",
    );
    let f = PipelineFile::load(&ok).unwrap();
    assert_eq!(f.run.seed, 2511, "documented default seed");
    assert_eq!(
        f.section::<ProbeSection>("probe").unwrap(),
        ProbeSection {
            l2: 0.5,
            layers: vec![]
        }
    );
    assert_eq!(
        f.section::<ProbeSection>("absent").unwrap(),
        ProbeSection::default()
    );

    let unknown = write(
        "unknown.toml",
        "[run]\nname = \"t\"\nmodel = \"m\"\n\n[probe]\nl2 = 0.5\nlayerz = [1]\n",
    );
    let e = PipelineFile::load(&unknown)
        .unwrap()
        .section::<ProbeSection>("probe")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown.toml") && e.contains("layerz") && e.contains("line 7"),
        "{e}"
    );

    let wrong = write(
        "wrong.toml",
        "[run]\nname = \"t\"\nmodel = \"m\"\n[probe]\nl2 = \"high\"\n",
    );
    let e = PipelineFile::load(&wrong)
        .unwrap()
        .section::<ProbeSection>("probe")
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong.toml") && e.contains("[probe]"), "{e}");

    let no_model = write("nomodel.toml", "[run]\nname = \"t\"\n");
    let e = PipelineFile::load(&no_model).unwrap_err().to_string();
    assert!(
        e.contains("nomodel.toml") && e.contains("[run]") && e.contains("model"),
        "{e}"
    );

    let typo = write(
        "typo.toml",
        "[run]\nname = \"t\"\nmodel = \"m\"\n[probes]\n",
    );
    let e = PipelineFile::load(&typo)
        .unwrap()
        .check_sections(&["probe"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("[probes]") && e.contains("line 4"), "{e}");

    let broken = write("broken.toml", "[run]\nname = \"t\"\nmodel = = \"m\"\n");
    let e = PipelineFile::load(&broken).unwrap_err().to_string();
    assert!(e.contains("broken.toml") && e.contains("line 3"), "{e}");
}
