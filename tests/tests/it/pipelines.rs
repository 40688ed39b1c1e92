//! Pipeline files: every shipped pipeline and every documented example parses, section by
//! section, with the stage's own type (unknown keys are errors), and a malformed file names
//! the key and its line.

use std::path::{Path, PathBuf};

use mosr_artifacts::PipelineFile;

const STAGES: [&str; 10] = [
    "data",
    "extract",
    "probe",
    "logit_lens",
    "augment",
    "weights",
    "finetune",
    "eval",
    "claims",
    "report",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn e_section<T: serde::de::DeserializeOwned + Default>(
    f: &PipelineFile,
    name: &str,
) -> Result<T, String> {
    f.section::<T>(name).map_err(|e| e.to_string())
}

fn parse_all(f: &PipelineFile) -> Result<(), String> {
    let e = |r: Result<(), mosr_artifacts::Error>| r.map_err(|e| e.to_string());
    e(f.check_sections(&STAGES))?;
    let v = |r: Result<(), _>| r.map_err(|e: anyhow::Error| format!("{}: {e:#}", f.path.display()));
    e(f.section::<mosr_data::stage::DataSection>("data").map(drop))?;
    let extract: mosr_extract::ExtractSection = e_section(f, "extract")?;
    v(extract.validate())?;
    e(f.section::<mosr_probe::ProbeSection>("probe").map(drop))?;
    e(f.section::<mosr_logit_lens::LogitLensSection>("logit_lens")
        .map(drop))?;
    let augment: mosr_augment::AugmentConfig = e_section(f, "augment")?;
    v(augment.validate())?;
    let weights: mosr_weights::WeightsConfig = e_section(f, "weights")?;
    v(weights.validate())?;
    let finetune: mosr_finetune::FinetuneConfig = e_section(f, "finetune")?;
    v(finetune.validate())?;
    e(f.section::<mosr_eval::EvalSection>("eval").map(drop))?;
    let claims: mosr_claims::ClaimsSection = e_section(f, "claims")?;
    claims.validate().map_err(|e| e.to_string())?;
    e(f.section::<mosr_report::ReportSection>("report").map(drop))?;
    Ok(())
}

#[test]
fn every_pipeline_and_example_parses() {
    let mut seen = 0;
    for dir in ["pipelines", "pipelines/examples"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            // Stage examples show only their section: give them smoke's `[run]`.
            let text = std::fs::read_to_string(&path).unwrap();
            let path = if text.contains("[run]") {
                path
            } else {
                let smoke = std::fs::read_to_string(repo().join("pipelines/smoke.toml")).unwrap();
                let run: String = smoke
                    .split("\n[")
                    .find(|s| s.starts_with("run]"))
                    .map(|s| format!("[{s}\n"))
                    .unwrap();
                let tmp = std::env::temp_dir().join(format!(
                    "mosr-example-{}-{}",
                    std::process::id(),
                    path.file_name().unwrap().to_string_lossy()
                ));
                std::fs::write(&tmp, run + &text).unwrap();
                tmp
            };
            let f = PipelineFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            parse_all(&f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    // smoke, default, models, study, paper-gpu and one example per configurable stage.
    assert!(seen >= 11, "only {seen} pipeline files found");
}

#[test]
fn malformed_pipeline_names_section_key_and_line() {
    let text = std::fs::read_to_string(repo().join("pipelines/smoke.toml")).unwrap();
    let dir = std::env::temp_dir().join(format!("mosr-pipelines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let line_of =
        |t: &str, needle: &str| t.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let cases = [
        (
            "steps = 3",
            "steps = \"three\"",
            "[finetune] line",
            "invalid type",
        ),
        (
            "harmful_n = 4",
            "harmfull_n = 4",
            "[eval] line",
            "unknown field `harmfull_n`",
        ),
        // 0 is not "all".
        (
            "set_n = 4",
            "set_n = 0",
            "[eval] line",
            "0 is not a sample size: write a count of at least 1, or \"all\" for every item",
        ),
        (
            "harmful_count = 8",
            "harmful_count = \"every\"",
            "[augment] line",
            "\"every\" is not a sample size",
        ),
    ];
    for (i, (from, to, at, reason)) in cases.iter().enumerate() {
        assert!(text.contains(from), "smoke.toml changed: no `{from}`");
        let bad = text.replacen(from, to, 1);
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, &bad).unwrap();
        let f = PipelineFile::load(&path).unwrap();
        let err = parse_all(&f).expect_err("a malformed file parsed");
        let line = line_of(&bad, to);
        assert!(
            err.contains(&format!("{at} {line}")) && err.contains(reason),
            "error `{err}` does not point at line {line} ({reason})"
        );
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    // Values `--check` judges before anything runs (the validation of each stage's section).
    let values = [
        (
            "batch_size = 8",
            "batch_size = 0",
            "[extract] batch_size must be at least 1",
        ),
        (
            "max_per_role_split = 12",
            "max_per_role_split = 0",
            "max_per_role_split = 0 would extract nothing",
        ),
        (
            "learning_rate = 1e-3",
            "learning_rate = -1.0",
            "learning_rate -1 must be positive",
        ),
        (
            "steps = 3",
            "steps = 0",
            "steps, batch_size and grad_accum must be at least 1",
        ),
        (
            "seeds = [2511, 2512]",
            "seeds = [2511, 2511]",
            "lists a seed twice",
        ),
        (
            "frontier_steps = [1]",
            "frontier_steps = [1, 3]",
            "finetune: frontier_steps [1, 3]: step 3 is not in 1..3",
        ),
        (
            "frontier_steps = [1]",
            "frontier_steps = [0]",
            "step 0 is not in 1..3",
        ),
        (
            "frontier_steps = [1]",
            "frontier_steps = [2, 1]",
            "finetune: frontier_steps [2, 1] must be strictly increasing",
        ),
    ];
    for (i, (from, to, reason)) in values.iter().enumerate() {
        assert!(text.contains(from), "smoke.toml changed: no `{from}`");
        let path = dir.join(format!("value{i}.toml"));
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let err = parse_all(&PipelineFile::load(&path).unwrap()).expect_err(to);
        assert!(
            err.contains(reason) && err.contains(&path.display().to_string()),
            "{to}: {err}"
        );
    }
    let path = dir.join("dup.toml");
    let dup = text.replacen(
        r#"roles = ["harmful", "benign","#,
        r#"roles = ["benign", "benign","#,
        1,
    );
    std::fs::write(&path, dup).unwrap();
    let err = parse_all(&PipelineFile::load(&path).unwrap()).unwrap_err();
    assert!(
        err.contains("[extract] roles lists `benign` twice"),
        "{err}"
    );
    // A section nobody reads.
    let path = dir.join("typo.toml");
    std::fs::write(&path, text.replacen("[probe]", "[probes]", 1)).unwrap();
    let err = parse_all(&PipelineFile::load(&path).unwrap()).unwrap_err();
    assert!(
        err.contains("[probes]") && err.contains("unknown section"),
        "{err}"
    );
    // A stage list naming no stage.
    let path = dir.join("stages.toml");
    let listed = text.replacen("[run]\n", "[run]\nstages = [\"data\", \"evaluate\"]\n", 1);
    std::fs::write(&path, listed).unwrap();
    let err = parse_all(&PipelineFile::load(&path).unwrap()).unwrap_err();
    assert!(
        err.contains("stages") && err.contains("unknown stage `evaluate`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_names_that_leave_the_runs_folder_are_refused() {
    let dir = std::env::temp_dir().join(format!("mosr-run-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str| {
        let p = dir.join("p.toml");
        std::fs::write(
            &p,
            format!("[run]\nname = \"{name}\"\nmodel = \"smollm2-135m-instruct\"\n"),
        )
        .unwrap();
        p
    };
    for bad in ["../outside", "/tmp/x", "a/b", ".hidden", "", "a\\\\b"] {
        let p = write(bad);
        let err = PipelineFile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("[run] name (line 2)") && err.contains("not a plain folder name"),
            "{bad}: {err}"
        );
        assert!(err.contains(&p.display().to_string()), "{err}");
    }
    for ok in ["smoke", "default-2", "paper_cpu.v1"] {
        assert_eq!(PipelineFile::load(&write(ok)).unwrap().run.name, ok);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_second_run_on_one_run_folder_is_refused_naming_the_holder() {
    let root = std::env::temp_dir().join(format!("mosr-lock-{}", std::process::id()));
    let run = mosr_artifacts::RunDir::new(&root, "p");
    let held = run.lock().unwrap();
    let err = run.lock().unwrap_err().to_string();
    assert!(
        err.contains("another run is using this run folder")
            && err.contains(&format!("pid {}", std::process::id()))
            && err.contains(".lock"),
        "{err}"
    );
    // Released on drop (and by the OS when a run is killed): the folder can be taken again.
    drop(held);
    run.lock().unwrap();
    std::fs::remove_dir_all(&root).ok();
}
