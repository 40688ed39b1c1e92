//! The statistics of the claims stage against hand-computed cases, the verdict rules on
//! synthetic inputs, the pairing invariant, and the report's ablation grouping.

use mosr_artifacts::eval::GenerationRow;
use mosr_claims::paired::{ColumnKey, paired_rows};
use mosr_claims::{Evidence, Kind, Verdict, combine, test_verdict};
use mosr_stats::{
    PairedCluster, clustered_mcnemar_p, clustered_rate, interpolate, mann_whitney_p,
    matched_differences, mcnemar_exact_p, median_interval, normal_cdf, normal_quantile,
    paired_diff, paired_n_for_power, two_sample_n_for_power, wilson,
};

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
}

fn singles(pairs: &[(bool, bool)]) -> Vec<PairedCluster> {
    pairs
        .iter()
        .map(|&p| PairedCluster::from_pairs([p]))
        .collect()
}

#[test]
fn normal_distribution_matches_tables() {
    close(normal_quantile(0.975), 1.959_964, 1e-6);
    close(normal_quantile(0.8), 0.841_621, 1e-6);
    close(normal_quantile(0.01), -2.326_348, 1e-6);
    close(normal_cdf(1.959_964), 0.975, 1e-6);
    close(normal_cdf(0.0), 0.5, 1e-7);
}

#[test]
fn exact_mcnemar_matches_binomial_tails() {
    // No discordant pairs, ties only: no evidence.
    assert_eq!(mcnemar_exact_p(0, 0), 1.0);
    assert_eq!(mcnemar_exact_p(4, 4), 1.0);
    // 3 vs 0: 2 · ½³.
    close(mcnemar_exact_p(3, 0), 0.25, 1e-12);
    // 5 vs 1: 2 · (1 + 6) / 64.
    close(mcnemar_exact_p(5, 1), 14.0 / 64.0, 1e-12);
    close(mcnemar_exact_p(1, 5), 14.0 / 64.0, 1e-12);
    // All ten pairs discordant one way: 2 / 1024.
    close(mcnemar_exact_p(10, 0), 2.0 / 1024.0, 1e-12);
    // Large n stays finite and symmetric (log-space tail).
    let p = mcnemar_exact_p(1200, 1000);
    assert!(p > 0.0 && p < 1e-4, "{p}");
}

#[test]
fn median_interval_is_the_order_statistics_of_binomial_tails() {
    // Six rounds: [min, max] covers the median with 1 − 2/2⁶; the next pair, 1 − 2·7/64 =
    // 0.78, falls short of 95%.
    let m = median_interval(&[3.0, 1.0, 2.0, 6.0, 5.0, 4.0], 0.95).unwrap();
    assert_eq!((m.n, m.median, m.low, m.high), (6, 3.5, 1.0, 6.0));
    close(m.coverage, 1.0 - 2.0 / 64.0, 1e-12);
    // Ten: P(X ≤ 1) = 11/1024 keeps 95% (0.9785), P(X ≤ 2) = 56/1024 does not (0.89).
    let ten: Vec<f64> = (1..=10).rev().map(f64::from).collect();
    let m = median_interval(&ten, 0.95).unwrap();
    assert_eq!((m.median, m.low, m.high), (5.5, 2.0, 9.0));
    close(m.coverage, 1.0 - 22.0 / 1024.0, 1e-12);
    // Five cannot reach 95%: the widest interval and its own coverage, 1 − 2/32.
    let m = median_interval(&[2.0, 9.0, 4.0, 1.0, 3.0], 0.95).unwrap();
    assert_eq!((m.median, m.low, m.high), (3.0, 1.0, 9.0));
    close(m.coverage, 0.9375, 1e-12);
    // One value is its own median, with no coverage; nothing or a NaN gives nothing.
    let m = median_interval(&[1.7], 0.95).unwrap();
    assert_eq!((m.median, m.low, m.high, m.coverage), (1.7, 1.7, 1.7, 0.0));
    assert!(median_interval(&[], 0.95).is_none());
    assert!(median_interval(&[1.0, f64::NAN], 0.95).is_none());
}

#[test]
fn clustered_mcnemar_with_one_pair_per_cluster_is_the_chi_square_test() {
    let mut pairs = vec![(true, false); 5];
    pairs.push((false, true));
    pairs.extend(vec![(true, true); 7]);
    // X² = (5 − 1)² / 6 = 2.667 -> p = 0.10247 (χ²₁ tail).
    close(clustered_mcnemar_p(&singles(&pairs)), 0.102_470, 1e-5);
    assert_eq!(
        clustered_mcnemar_p(&singles(&[(true, true), (false, false)])),
        1.0
    );
}

#[test]
fn paired_difference_on_ties_and_on_all_discordant_pairs() {
    // Ties only: difference 0, a zero-width interval, p = 1.
    let ties = singles(&[(true, true), (false, false), (true, true), (false, false)]);
    let d = paired_diff(&ties, 500, 1).unwrap();
    assert_eq!(
        (d.diff, d.ci_low, d.ci_high, d.p_value),
        (0.0, 0.0, 0.0, 1.0)
    );
    assert_eq!(d.discordance, 0.0);
    // Every pair discordant the same way: difference 1 whatever is resampled.
    let all = singles(&[(true, false); 10]);
    let d = paired_diff(&all, 500, 1).unwrap();
    assert_eq!((d.diff, d.ci_low, d.ci_high), (1.0, 1.0, 1.0));
    assert_eq!((d.a_only, d.b_only), (10, 0));
    close(d.p_value, 2.0 / 1024.0, 1e-12);
    // Mixed: 6 vs 2 discordant among 20 pairs: diff 0.2, exact p = 2 · 37/256.
    let mut pairs = vec![(true, false); 6];
    pairs.extend(vec![(false, true); 2]);
    pairs.extend(vec![(false, false); 12]);
    let d = paired_diff(&singles(&pairs), 2000, 7).unwrap();
    close(d.diff, 0.2, 1e-12);
    close(d.p_value, 2.0 * 37.0 / 256.0, 1e-12);
    assert!(d.ci_low < 0.2 && d.ci_high > 0.2, "{d:?}");
    // Seeded: the same seed gives the same interval, another seed a (slightly) different one.
    assert_eq!(paired_diff(&singles(&pairs), 2000, 7), Some(d));
    assert!(paired_diff(&[], 10, 1).is_none());
}

#[test]
fn clustering_widens_the_interval_of_correlated_responses() {
    // 10 prompts × 5 attacks; each prompt either always succeeds or always fails.
    let clustered: Vec<(u64, u64)> = (0..10)
        .map(|i| if i < 5 { (5, 5) } else { (0, 5) })
        .collect();
    let c = clustered_rate(&clustered, 1.959_964).unwrap();
    let (lo, hi) = wilson(25.0, 50.0, 1.959_964).unwrap();
    assert_eq!((c.k, c.n, c.clusters), (25, 50, 10));
    // deff = (10/9 · 10 · 2.5² / 50²) / (0.25 / 50) = 5.56: the effective n is 9.
    close(c.design_effect, 50.0 / 9.0, 1e-9);
    let (elo, ehi) = wilson(4.5, 9.0, 1.959_964).unwrap();
    close(c.ci_low, elo, 1e-12);
    close(c.ci_high, ehi, 1e-12);
    assert!(
        c.ci_high - c.ci_low > 1.8 * (hi - lo),
        "{c:?} vs ({lo}, {hi})"
    );
    // Independent-looking clusters (one response each) stay close to Wilson.
    let single: Vec<(u64, u64)> = (0..50).map(|i| ((i < 25) as u64, 1)).collect();
    let s = clustered_rate(&single, 1.959_964).unwrap();
    close(s.design_effect, 50.0 / 49.0, 1e-9);
    // A rate of 0 over clustered responses: each cluster counts once.
    let zero = clustered_rate(&[(0, 5), (0, 5)], 1.959_964).unwrap();
    close(zero.design_effect, 5.0, 1e-12);
}

#[test]
fn power_and_two_sample_tests_match_hand_computed_values() {
    // Connor 1987 at δ = 0.15, ψ = 0.3: 102.26 -> 103 pairs.
    assert_eq!(paired_n_for_power(0.15, 0.3, 0.05, 0.8), 103);
    // ψ below δ is raised to δ.
    assert_eq!(
        paired_n_for_power(0.15, 0.05, 0.05, 0.8),
        paired_n_for_power(0.15, 0.15, 0.05, 0.8)
    );
    // The inverse: the largest discordance 103 / 128 pairs can afford (0.302 / 0.374); 40
    // pairs cannot reach 80% power on 15 points at any discordance.
    use mosr_stats::max_discordance_for_power as max_psi;
    close(max_psi(103, 0.15, 0.05, 0.8).unwrap(), 0.302_116, 1e-5);
    close(max_psi(128, 0.15, 0.05, 0.8).unwrap(), 0.373_764, 1e-5);
    assert_eq!(max_psi(40, 0.15, 0.05, 0.8), None);
    // 2 (1.96 + 0.84)² / 0.5² = 62.8 -> 63 per group.
    assert_eq!(two_sample_n_for_power(0.5, 0.05, 0.8), 63);
    // Mann–Whitney, no ties: U = 0, z = 4 / √5.25 -> p = 0.08086.
    close(
        mann_whitney_p(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]),
        0.080_856,
        1e-5,
    );
    assert_eq!(mann_whitney_p(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
}

#[test]
fn frontier_interpolates_inside_and_refuses_to_extrapolate() {
    // A hand-made curve, given out of order, with two points at one x (averaged).
    let curve = [(0.6, 0.1), (0.2, 0.5), (0.4, 0.2), (0.4, 0.4)];
    close(interpolate(&curve, 0.3).unwrap(), 0.4, 1e-12);
    close(interpolate(&curve, 0.4).unwrap(), 0.3, 1e-12);
    close(interpolate(&curve, 0.5).unwrap(), 0.2, 1e-12);
    assert_eq!(interpolate(&curve, 0.1), None);
    assert_eq!(interpolate(&curve, 0.7), None);
    assert_eq!(interpolate(&[], 0.5), None);
    assert_eq!(interpolate(&[(0.5, 0.3)], 0.5), Some(0.3));
    let other = [(0.3, 0.6), (0.7, 0.2)];
    let d = matched_differences(&curve, &other, &[0.2, 0.3, 0.5, 0.7]);
    // Only x within both ranges: 0.3 and 0.5.
    assert_eq!(d.len(), 2);
    close(d[0].1, 0.4 - 0.6, 1e-12);
    close(d[1].1, 0.2 - 0.4, 1e-12);
}

fn ev(kind: Kind, direction: i32, lo: f64, hi: f64, p: Option<f64>) -> Evidence {
    Evidence {
        kind,
        direction,
        ci_low: lo,
        ci_high: hi,
        p_value: p,
    }
}

#[test]
fn verdict_rules_give_each_verdict() {
    let sup = Kind::Superiority;
    // Claimed positive.
    assert_eq!(
        test_verdict(&ev(sup, 1, 0.05, 0.3, Some(0.01)), 0.05),
        Verdict::Supported
    );
    assert_eq!(
        test_verdict(&ev(sup, 1, -0.3, -0.05, Some(0.01)), 0.05),
        Verdict::Contradicted
    );
    assert_eq!(
        test_verdict(&ev(sup, 1, -0.1, 0.3, Some(0.2)), 0.05),
        Verdict::Inconclusive
    );
    // Interval off zero but the test not significant: inconclusive.
    assert_eq!(
        test_verdict(&ev(sup, 1, 0.01, 0.3, Some(0.07)), 0.05),
        Verdict::Inconclusive
    );
    // Claimed negative (lower over-refusal).
    assert_eq!(
        test_verdict(&ev(sup, -1, -0.3, -0.05, Some(0.01)), 0.05),
        Verdict::Supported
    );
    assert_eq!(
        test_verdict(&ev(sup, -1, 0.05, 0.3, Some(0.01)), 0.05),
        Verdict::Contradicted
    );
    // Non-inferiority: ASR not higher by more than 0.05.
    let ni = Kind::NonInferiority { margin: 0.05 };
    assert_eq!(
        test_verdict(&ev(ni, -1, -0.2, 0.04, None), 0.05),
        Verdict::Supported
    );
    assert_eq!(
        test_verdict(&ev(ni, -1, 0.06, 0.3, None), 0.05),
        Verdict::Contradicted
    );
    assert_eq!(
        test_verdict(&ev(ni, -1, -0.1, 0.1, None), 0.05),
        Verdict::Inconclusive
    );
    // Combining parts and seeds.
    use Verdict::*;
    assert_eq!(combine(&[Supported, Supported]).0, Supported);
    assert_eq!(combine(&[Supported, Inconclusive]).0, Inconclusive);
    assert_eq!(combine(&[Supported, Contradicted]).0, Contradicted);
    assert_eq!(combine(&[]).0, Inconclusive);
}

fn row(
    variant: &str,
    set: &str,
    attack: &str,
    prompt: &str,
    paired: Option<&str>,
    outcome: &str,
) -> GenerationRow {
    // The sets here are named after their role, as the eval stage names them.
    GenerationRow {
        variant: variant.into(),
        seed: (variant != "base").then_some(7),
        prompt_id: prompt.into(),
        paired_id: paired.map(String::from),
        ..crate::eval::gen_row(set, attack, set, outcome, None)
    }
}

#[test]
fn paired_rows_pair_by_prompt_and_cluster_pooled_attacks() {
    let sets = ["overrefusal_safe".to_string()];
    let mut rows = Vec::new();
    for (v, outs) in [
        ("base", ["complied", "complied", "complied", "complied"]),
        ("rr", ["refused", "complied", "refused", "gibberish"]),
    ] {
        rows.push(row(v, "harmful", "direct", "h1", None, outs[0]));
        // A tense rephrasing of h1 belongs to h1's cluster.
        rows.push(row(v, "harmful", "past_tense", "t1", Some("h1"), outs[1]));
        rows.push(row(v, "overrefusal_safe", "direct", "s1", None, outs[2]));
        rows.push(row(v, "overrefusal_safe", "direct", "s2", None, outs[3]));
    }
    let out = paired_rows(&rows, "base", &sets, 200).unwrap();
    assert!(out.iter().all(|r| r.seed == 7 && r.variant == "rr"));
    let get = |set: &str, attack: &str, metric: &str| {
        let key = ColumnKey {
            set: set.into(),
            attack: attack.into(),
            metric: match metric {
                "asr" => "asr",
                "refused" => "refused",
                "gibberish" => "gibberish",
                _ => "over_refusal",
            },
        };
        out.iter().find(|r| r.column == key).unwrap().diff
    };
    let all = get("harmful", "all", "asr");
    assert_eq!((all.n, all.clusters), (2, 1));
    close(all.diff, -0.5, 1e-12);
    let pooled = get("overrefusal", "direct", "refused");
    assert_eq!((pooled.n, pooled.a_only, pooled.b_only), (2, 1, 0));
    close(get("overrefusal", "direct", "gibberish").diff, 0.5, 1e-12);
    close(
        get("overrefusal_safe", "direct", "over_refusal").diff,
        1.0,
        1e-12,
    );
    // A variant that skipped a prompt breaks the pairing: a clear error, no table.
    rows.pop();
    let err = paired_rows(&rows, "base", &sets, 200)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not answer the same prompts"), "{err}");
}

#[test]
fn ablation_counts_the_template_attack_once() {
    use mosr_artifacts::eval::MetricRow;
    use mosr_report::sections::{group, main_column};
    let m = |set: &str, attack: &str, metric: &str| MetricRow {
        variant: Some("rr".into()),
        seed: Some(1),
        set: set.into(),
        attack: Some(attack.into()),
        metric: metric.into(),
        value: 0.5,
        k: Some(8),
        n: 16,
        ci_low: Some(0.3),
        ci_high: Some(0.7),
    };
    assert_eq!(
        main_column(&m("harmful", "template", "asr")).unwrap().0,
        group::ASR
    );
    assert_eq!(
        main_column(&m("harmful", "template/persona_unfiltered", "asr"))
            .unwrap()
            .0,
        group::TEMPLATE
    );
    assert_eq!(
        main_column(&m("harmful", "all", "asr")).unwrap().0,
        group::ASR_POOLED
    );
    assert_eq!(
        main_column(&m("overrefusal_safe", "direct", "refusal_rate"))
            .unwrap()
            .0,
        group::REFUSED
    );
    assert_eq!(
        main_column(&m("overrefusal_borderline", "direct", "gibberish_rate"))
            .unwrap()
            .0,
        group::GIBBERISH
    );
    // Refusals of the unsafe contrast set are not over-refusals.
    assert!(main_column(&m("overrefusal_unsafe_contrast", "direct", "refusal_rate")).is_none());
}

#[test]
fn discrimination_compares_each_contrast_with_its_safe_twin() {
    use mosr_claims::paired::discrimination_rows;
    let mut rows = Vec::new();
    // Three twin pairs for rr: refuses (unsafe c1, safe s1), (c2 only), (neither of c3, s3).
    for (safe, contrast, s_out, c_out) in [
        ("s1", "c1", "refused", "refused"),
        ("s2", "c2", "complied", "refused"),
        ("s3", "c3", "complied", "complied"),
    ] {
        let mut s = row(
            "rr",
            "overrefusal_safe",
            "direct",
            safe,
            Some(contrast),
            s_out,
        );
        s.role = "overrefusal_safe".into();
        let mut c = row(
            "rr",
            "overrefusal_unsafe_contrast",
            "direct",
            contrast,
            Some(safe),
            c_out,
        );
        c.role = "overrefusal_unsafe_contrast".into();
        rows.extend([s, c]);
    }
    let d = discrimination_rows(&rows, 200);
    assert_eq!(d.len(), 1);
    let x = &d[0];
    assert_eq!((x.variant.as_str(), x.seed, x.diff.n), ("rr", Some(7), 3));
    // Contrast refused 2/3, safe refused 1/3: discrimination 1/3; one discordant pair.
    close(x.diff.rate_a, 2.0 / 3.0, 1e-12);
    close(x.diff.rate_b, 1.0 / 3.0, 1e-12);
    close(x.diff.diff, 1.0 / 3.0, 1e-12);
    close(x.diff.p_value, 1.0, 1e-12);
}

#[test]
fn claims_combine_seeds_and_size_inconclusive_tests() {
    use mosr_claims::ClaimsSection;
    use mosr_claims::paired::{ColumnKey, PairedRow};
    use mosr_stats::PairedDiff;
    let cfg = ClaimsSection::default();
    let row = |seed: i64, diff: f64, lo: f64, hi: f64, p: f64| PairedRow {
        seed,
        variant: "rr".into(),
        reference: "base".into(),
        column: ColumnKey {
            set: "overrefusal".into(),
            attack: "direct".into(),
            metric: "refused",
        },
        diff: PairedDiff {
            n: 128,
            clusters: 128,
            rate_a: 0.2 + diff,
            rate_b: 0.2,
            diff,
            ci_low: lo,
            ci_high: hi,
            a_only: 20,
            b_only: 7,
            p_value: p,
            discordance: 0.2,
        },
    };
    // Seed 1 supports C2, seed 2 is inconclusive: the claim is inconclusive.
    let rows = [row(1, 0.2, 0.1, 0.3, 0.001), row(2, 0.1, -0.02, 0.22, 0.09)];
    let (tests, claims) = mosr_claims::assemble(&cfg, &rows, &[], None, &[]);
    let c2: Vec<_> = tests.iter().filter(|t| t.claim == "C2").collect();
    assert_eq!(c2.len(), 2);
    assert_eq!(c2[0].verdict, Verdict::Supported);
    assert_eq!(c2[0].n_needed, None);
    // The inconclusive seed: pairs to detect its observed 0.1 at discordance 0.2.
    assert_eq!(
        c2[1].n_needed,
        Some(paired_n_for_power(0.1, 0.2, 0.05, 0.8))
    );
    let claim = claims.iter().find(|c| c.claim == "C2").unwrap();
    assert_eq!(
        (claim.verdict, claim.seeds, claim.tests),
        (Verdict::Inconclusive, 2, 2)
    );
    close(claim.effect, 0.15, 1e-12);
    assert_eq!((claim.ci_low, claim.ci_high), (-0.02, 0.3));
    // Claims without tests (no C3 rows here) are inconclusive, never supported.
    let c3 = claims.iter().find(|c| c.claim == "C3").unwrap();
    assert_eq!((c3.verdict, c3.tests), (Verdict::Inconclusive, 0));
    // A zero effect: no n decides it.
    let (tests, _) = mosr_claims::assemble(&cfg, &[row(1, 0.0, -0.05, 0.05, 1.0)], &[], None, &[]);
    assert_eq!(tests[0].n_needed, None);
}

#[test]
fn frontier_mean_difference_on_hand_made_curves_and_without_overlap() {
    use mosr_stats::frontier::{grid, overlap};
    use mosr_stats::mean_matched_difference;
    // Both ends exact, evenly spaced.
    assert_eq!(grid(0.2, 0.6, 3), vec![0.2, 0.4, 0.6]);
    assert_eq!(grid(0.5, 0.5, 21), vec![0.5]);
    // a: y = 1 − x on [0, 1]; b: y = 0.5 on [0.5, 1] (two points). Overlap [0.5, 1]: the
    // difference 0.5 − x is linear, so its mean over an even grid is its midpoint value −0.25.
    let a = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)];
    let b = [(0.5, 0.5), (1.0, 0.5)];
    assert_eq!(overlap(&a, &b), Some((0.5, 1.0)));
    let (d, range) = mean_matched_difference(&a, &b, 21).unwrap();
    close(d, -0.25, 1e-12);
    assert_eq!(range, (0.5, 1.0));
    // Lines that share no ASR: no comparison (and no extrapolation).
    let c = [(0.0, 0.9), (0.3, 0.8)];
    let e = [(0.6, 0.1), (0.9, 0.0)];
    assert_eq!(overlap(&c, &e), None);
    assert_eq!(mean_matched_difference(&c, &e, 21), None);
    // Touching at one ASR value: the difference there.
    let f = [(0.3, 0.2), (0.9, 0.0)];
    let (d, range) = mean_matched_difference(&c, &f, 21).unwrap();
    assert_eq!(range, (0.3, 0.3));
    close(d, 0.8 - 0.2, 1e-12);
}

/// Rows of `frontier_generations` for one point: harmful prompt i complied iff i < `asr_k`,
/// over-refusal prompt i refused iff i < `refused_k` (20 prompts each).
fn frontier_point(
    variant: &str,
    seed: Option<i64>,
    step: i64,
    asr_k: usize,
    refused_k: usize,
) -> Vec<mosr_artifacts::eval::FrontierGenerationRow> {
    let row = |set: &str, i: usize, outcome: &str| mosr_artifacts::eval::FrontierGenerationRow {
        variant: variant.into(),
        seed,
        step,
        source: if seed.is_none() { "base" } else { "snapshot" }.into(),
        set: set.into(),
        prompt_id: format!("{set}-{i:02}"),
        role: set.into(),
        response: String::new(),
        perplexity: None,
        refusal: outcome == "refused",
        gibberish: false,
        outcome: outcome.into(),
    };
    let mut out = Vec::new();
    for i in 0..20 {
        out.push(row(
            "harmful",
            i,
            if i < asr_k { "complied" } else { "refused" },
        ));
        let set = if i % 2 == 0 {
            "overrefusal_safe"
        } else {
            "overrefusal_borderline"
        };
        let mut r = row(set, i, if i < refused_k { "refused" } else { "complied" });
        r.prompt_id = format!("or-{i:02}");
        out.push(r);
    }
    out
}

/// The matched-ASR comparison on lines whose answer is known: rr's refusal rate is 0.8(1 − ASR),
/// mosr's 0.4(1 − ASR), so mosr − rr = −0.4(1 − ASR), whose mean over the shared ASR range
/// [0, 1] is −0.2; every mosr refusal is also an rr refusal, so every bootstrap draw is
/// negative and the test supports C3. Identical lines give exactly 0 and stay inconclusive.
#[test]
fn frontier_effect_on_a_synthetic_case_with_a_known_answer() {
    use mosr_claims::ClaimsSection;
    use mosr_claims::frontier::{GRID, claim_test, frontier_tests};
    let cfg = ClaimsSection {
        resamples: 500,
        ..ClaimsSection::default()
    };
    let mut rows = frontier_point("base", None, 0, 20, 0);
    for (v, refused) in [("rr", [8, 16]), ("mosr", [4, 8]), ("rr_weights", [8, 16])] {
        rows.extend(frontier_point(v, Some(1), 2, 10, refused[0]));
        rows.extend(frontier_point(v, Some(1), 4, 0, refused[1]));
    }
    let tests = frontier_tests(&cfg, &rows).unwrap();
    assert_eq!(tests.len(), 2, "C3 and C4a (no rr_augment line)");
    let c3 = tests.iter().find(|t| t.claim == "C3").unwrap();
    assert_eq!((c3.points_variant, c3.points_reference), (3, 3));
    assert_eq!((c3.harmful_n, c3.overrefusal_n), (20, 20));
    let e = c3.result.as_ref().unwrap();
    close(e.effect, -0.2, 1e-12);
    assert_eq!((e.asr_low, e.asr_high), (0.0, 1.0));
    assert_eq!(
        e.resamples, 500,
        "base is on both lines: every draw overlaps"
    );
    assert!(
        e.ci_high < 0.0 && e.ci_low <= -0.2 && -0.2 <= e.ci_high,
        "{e:?}"
    );
    let t = claim_test(&cfg, c3);
    assert_eq!(
        (t.verdict, t.direction, t.p_value),
        (Verdict::Supported, -1, None)
    );
    assert!(
        t.comparison.contains(&format!("{GRID} points")),
        "{}",
        t.comparison
    );
    // rr_weights has rr's very outcomes: 0 in every draw, inconclusive.
    let c4a = tests.iter().find(|t| t.claim == "C4a").unwrap();
    let e = c4a.result.as_ref().unwrap();
    assert_eq!((e.effect, e.ci_low, e.ci_high), (0.0, 0.0, 0.0));
    assert_eq!(claim_test(&cfg, c4a).verdict, Verdict::Inconclusive);
    // The frontier test joins C3's verdict beside the paired tests.
    let (all, claims) = mosr_claims::assemble(&cfg, &[], &[], None, &[t]);
    assert_eq!(all.len(), 1);
    let c3 = claims.iter().find(|c| c.claim == "C3").unwrap();
    assert_eq!((c3.verdict, c3.tests), (Verdict::Supported, 1));
    // A point that answered other prompts than the base model is refused, named.
    let mut bad = rows.clone();
    bad.retain(|r| !(r.variant == "mosr" && r.step == 4 && r.prompt_id == "or-03"));
    let err = format!("{:#}", frontier_tests(&cfg, &bad).unwrap_err());
    assert!(
        err.contains("`mosr (seed 1)` at step 4") && err.contains("or-03"),
        "{err}"
    );
    // Claims that pool sets the frontier did not send: refused, named.
    let other = ClaimsSection {
        overrefusal_sets: vec!["benign".into()],
        ..cfg.clone()
    };
    let err = format!("{:#}", frontier_tests(&other, &rows).unwrap_err());
    assert!(err.contains("overrefusal_sets [\"benign\"]"), "{err}");
}

/// Lines that do not share an ASR value (no base point on them) give no effect and an
/// inconclusive test that says why.
#[test]
fn frontier_without_asr_overlap_is_inconclusive_with_its_reason() {
    use mosr_claims::ClaimsSection;
    use mosr_claims::frontier::{FrontierTest, claim_test};
    use mosr_stats::{LineOutcomes, frontier_effect};
    let line = |asr: [usize; 2]| LineOutcomes {
        harmful: asr
            .iter()
            .map(|&k| (0..10).map(|i| i < k).collect())
            .collect(),
        overrefusal: asr.iter().map(|_| vec![false; 10]).collect(),
    };
    let (a, b) = (line([9, 7]), line([3, 1]));
    let why = frontier_effect(&a, &b, 21, 200, 7).unwrap_err();
    assert_eq!((why.asr_a, why.asr_b), (Some((0.7, 0.9)), Some((0.1, 0.3))));
    let test = FrontierTest {
        claim: "C3",
        seed: 1,
        variant: "mosr".into(),
        reference: "rr".into(),
        points_variant: 2,
        points_reference: 2,
        harmful_n: 10,
        overrefusal_n: 10,
        result: Err(why),
    };
    let t = claim_test(&ClaimsSection::default(), &test);
    assert_eq!(t.verdict, Verdict::Inconclusive);
    assert!(t.effect.is_nan() && t.ci_low.is_nan());
    assert!(
        t.comparison
            .contains("do not overlap (0.700–0.900 against 0.100–0.300)"),
        "{}",
        t.comparison
    );
}

/// Lines that meet only at the base model's point (every line starts there) compare nothing:
/// the difference there is 0 by construction, so the test has no effect and says why instead
/// of reporting 0 with an interval.
#[test]
fn frontier_lines_meeting_only_at_the_base_point_are_inconclusive() {
    use mosr_claims::ClaimsSection;
    use mosr_claims::frontier::{FrontierTest, claim_test};
    use mosr_stats::{LineOutcomes, frontier_effect};
    // ASR per point out of 10 harmful prompts; the base point (5 of 10) first on both lines.
    let line = |asr: [usize; 3], refused: [usize; 3]| LineOutcomes {
        harmful: asr
            .iter()
            .map(|&k| (0..10).map(|i| i < k).collect())
            .collect(),
        overrefusal: refused
            .iter()
            .map(|&k| (0..10).map(|i| i < k).collect())
            .collect(),
    };
    let (a, b) = (line([5, 3, 1], [2, 6, 9]), line([5, 7, 9], [2, 1, 0]));
    let why = frontier_effect(&a, &b, 21, 200, 7).unwrap_err();
    assert_eq!((why.asr_a, why.asr_b), (Some((0.1, 0.5)), Some((0.5, 0.9))));
    let test = FrontierTest {
        claim: "C3",
        seed: 2513,
        variant: "mosr".into(),
        reference: "rr".into(),
        points_variant: 3,
        points_reference: 3,
        harmful_n: 10,
        overrefusal_n: 10,
        result: Err(why),
    };
    let t = claim_test(&ClaimsSection::default(), &test);
    assert_eq!(t.verdict, Verdict::Inconclusive);
    assert!(t.effect.is_nan() && t.ci_low.is_nan() && t.ci_high.is_nan());
    assert!(
        t.comparison
            .contains("meet only at 0.500, so no ASR range is common"),
        "{}",
        t.comparison
    );
    // Lines sharing a range keep their effect: b moved to cover 0.3-0.5 as well.
    let b = line([5, 3, 9], [2, 1, 0]);
    let e = frontier_effect(&a, &b, 21, 200, 7).unwrap();
    assert_eq!((e.asr_low, e.asr_high), (0.3, 0.5));
    assert!(
        e.effect > 0.0,
        "a refuses more than b over 0.3-0.5: {}",
        e.effect
    );
}
