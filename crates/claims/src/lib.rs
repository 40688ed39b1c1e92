//! mosr-claims: the claims stage. Reads the evaluation's responses and the probe's held-out
//! scores and turns them into tests and a verdict for each claim of the paper:
//!
//! * C1: over-refusal prompts sit between benign and harmful prompts in representation space
//!   (held-out boundary positions, [`boundary`]);
//! * C2: circuit-breaker training (rr) raises over-refusal over the base model;
//! * C3: MOSR has lower over-refusal than rr at similar or lower ASR;
//! * C4a/C4b: each component (overlap weights, context augmentation) contributes.
//!
//! C2–C4 rest on paired tests ([`paired`]): every variant answered the same prompts, so a
//! comparison is over pairs of responses, with a paired cluster-bootstrap interval and a
//! McNemar p-value; C3 and C4 are also tested along the safety/over-refusal frontier, at
//! matched ASR ([`frontier`]), when the evaluation has one. Over-refusal in the claims means
//! refusals (the paper's notion); gibberish is its own column in `paired_tests`. Verdicts follow from the numbers by the rules of
//! [`verdict`] (docs/claims.md), never by hand.

pub mod boundary;
pub mod claims;
pub mod config;
pub mod frontier;
pub mod paired;
pub mod stage;
pub mod verdict;

pub use claims::{ClaimRow, ClaimTest, assemble};
pub use config::ClaimsSection;
pub use stage::{Claims, run};
pub use verdict::{Evidence, Kind, Verdict, combine, test_verdict};
