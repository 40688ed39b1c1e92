//! The few-row product (`mosr_kernels::few_rows`, used by every decode-step projection on the
//! CPU device) against hand-computed values and an f64 reference, on every code path: full
//! and partial panels, row blocks of 1..8, the row-split and column-split parallel plans.

use burn::tensor::module::linear;
use burn::tensor::{Distribution, Tensor, TensorData};
use mosr_kernels::{MAX_ROWS, few_rows};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        for c in 0..n {
            let s: f64 = (0..k)
                .map(|i| x[r * k + i] as f64 * w[i * n + c] as f64)
                .sum();
            out[r * n + c] = s as f32;
        }
    }
    out
}

#[test]
fn kernels_few_rows_hand_computed() {
    // [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, -1]] = [[4, -1], [10, -1]]
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let w = [1.0, 0.0, 0.0, 1.0, 1.0, -1.0];
    let mut out = [f32::NAN; 4];
    few_rows(&x, 2, 3, &w, 2, &mut out);
    assert_eq!(out, [4.0, -1.0, 10.0, -1.0]);
    // k = 0 is the empty sum.
    let mut out = [f32::NAN; 3];
    few_rows(&[], 1, 0, &[], 3, &mut out);
    assert_eq!(out, [0.0; 3]);
}

#[test]
fn kernels_few_rows_match_f64_reference_on_every_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // n covers: below one vector, partial panels (17, 33, 100), exact panels, and the
    // column-split plan (>= 4096 columns, with a partial last panel).
    for &(k, n) in &[
        (1, 1),
        (3, 7),
        (5, 16),
        (31, 17),
        (32, 32),
        (33, 33),
        (64, 100),
        (576, 192),
        (1536, 96),
        (70, 4136),
    ] {
        for rows in [1, 2, 3, 4, 5, 7, 8, 9, 13, MAX_ROWS] {
            let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let want = reference(&x, rows, k, &w, n);
            let mut got = vec![f32::NAN; rows * n];
            few_rows(&x, rows, k, &w, n, &mut got);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                // f32 accumulation of k products of magnitude <= 1.
                let tol = 1e-5 * (k as f32).sqrt().max(1.0) * 4.0;
                assert!(
                    (g - e).abs() <= tol,
                    "rows {rows} k {k} n {n}: element {i} is {g}, f64 reference {e}"
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "w is not [3, 2]")]
fn kernels_few_rows_reject_wrong_shapes() {
    let mut out = [0f32; 2];
    few_rows(&[1.0, 2.0, 3.0], 1, 3, &[1.0; 5], 2, &mut out);
}

#[test]
fn kernels_linear_through_burn_matches_burn_linear() {
    let dev = mosr_lm::Device::flex();
    let w = Tensor::<2>::random([96, 200], Distribution::Default, &dev);
    let b = Tensor::<1>::random([200], Distribution::Default, &dev);
    // Contiguous rows, and a strided view (every other position of a longer sequence).
    let x = Tensor::<3>::random([3, 2, 96], Distribution::Default, &dev);
    let strided = Tensor::<3>::random([3, 4, 96], Distribution::Default, &dev)
        .narrow(1, 1, 2)
        .swap_dims(0, 1);
    for x in [x, strided] {
        let got = mosr_lm::cpu::linear(&x, &w, Some(&b)).expect("few-row path applies");
        let want = linear(x.clone(), w.clone(), Some(b.clone()));
        assert_eq!(got.dims(), want.dims());
        let (g, e): (Vec<f32>, Vec<f32>) = (
            got.into_data().try_to_vec().unwrap(),
            want.into_data().try_to_vec().unwrap(),
        );
        for (g, e) in g.iter().zip(&e) {
            assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
        }
    }
    // Too many rows: left to burn's GEMM.
    let tall = Tensor::<3>::random([1, MAX_ROWS + 1, 96], Distribution::Default, &dev);
    assert!(mosr_lm::cpu::linear(&tall, &w, None).is_none());
    // Autodiff tensors keep burn's op (their gradient is recorded there).
    let ad = dev.clone().autodiff();
    let xa = Tensor::<3>::from_data(TensorData::new(vec![0.5f32; 96], [1, 1, 96]), &ad);
    let wa = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 96 * 4], [96, 4]), &ad);
    assert!(mosr_lm::cpu::linear(&xa, &wa, None).is_none());
}

#[test]
fn kernels_swiglu_matches_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Ordinary activations, the saturating tails, and a length that ends in a partial vector.
    let mut gate: Vec<f32> = (0..70_001).map(|_| rng.random_range(-12.0..12.0)).collect();
    gate.extend([-200.0, -88.0, -30.0, -1e-6, 0.0, 1e-6, 30.0, 88.0, 200.0]);
    let up: Vec<f32> = (0..gate.len())
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let mut got = vec![f32::NAN; gate.len()];
    mosr_kernels::swiglu(&gate, &up, &mut got);
    for ((&g, &u), &o) in gate.iter().zip(&up).zip(&got) {
        let want = (g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64) as f32;
        assert!(
            (o - want).abs() <= 2e-6 * want.abs() + 1e-30,
            "swiglu({g}, {u}) = {o}, f64 reference {want}"
        );
    }
    // NaN propagates.
    let mut out = [0f32; 1];
    mosr_kernels::swiglu(&[f32::NAN], &[1.0], &mut out);
    assert!(out[0].is_nan());
    // Through burn on the CPU device: equal to burn's silu · up within f32 rounding.
    let dev = mosr_lm::Device::flex();
    let g = Tensor::<3>::random([2, 3, 50], Distribution::Normal(0.0, 4.0), &dev);
    let u = Tensor::<3>::random([2, 3, 50], Distribution::Default, &dev);
    let got: Vec<f32> = mosr_lm::fused::swiglu(g.clone(), u.clone())
        .into_data()
        .try_to_vec()
        .unwrap();
    let want: Vec<f32> = (burn::tensor::activation::silu(g) * u)
        .into_data()
        .try_to_vec()
        .unwrap();
    for (o, e) in got.iter().zip(&want) {
        assert!((o - e).abs() <= 1e-5 * (1.0 + e.abs()), "{o} vs {e}");
    }
}

#[test]
fn kernels_dropout_mask_is_seeded_scaled_and_at_the_right_rate() {
    let keep = 0.95;
    let mut a = vec![f32::NAN; 200_003];
    mosr_kernels::dropout_mask(&mut a, keep, 42);
    let scale = (1.0 / keep) as f32;
    assert!(a.iter().all(|&v| v == 0.0 || v == scale));
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
    // Binomial standard deviation at n = 200k: 0.0005; allow 6 sigma.
    assert!((kept - keep).abs() < 0.003, "kept fraction {kept}");
    // Same key: same mask; the mask of a prefix is the prefix of the mask (element i depends
    // only on (key, i), not on the length or the chunking).
    let mut b = vec![0f32; 200_003];
    mosr_kernels::dropout_mask(&mut b, keep, 42);
    assert_eq!(a, b);
    let mut prefix = vec![0f32; 1000];
    mosr_kernels::dropout_mask(&mut prefix, keep, 42);
    assert_eq!(prefix[..], a[..1000]);
    // Another key: another mask (two independent masks at 5% drop agree on ~90.5%).
    let mut c = vec![0f32; 200_003];
    mosr_kernels::dropout_mask(&mut c, keep, 43);
    let same = a.iter().zip(&c).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    assert!(
        (same - (keep * keep + (1.0 - keep) * (1.0 - keep))).abs() < 0.005,
        "{same}"
    );
    // Element i is the documented hash: splitmix64(key ^ splitmix64(i >> 1)), low 32 bits
    // for even i, high for odd, kept below keep · 2^32 (checked at chunk edges too).
    let splitmix = |z: u64| {
        let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let threshold = (keep * 4_294_967_296.0f64).round() as u64;
    for i in (0..40).chain(32_760..32_780).chain(199_990..200_003) {
        let h = splitmix(42 ^ splitmix(i as u64 >> 1));
        let u = if i % 2 == 0 { h & 0xffff_ffff } else { h >> 32 };
        let want = if u < threshold { scale } else { 0.0 };
        assert_eq!(a[i], want, "element {i}");
    }
    // keep = 1 keeps everything at scale 1.
    let mut d = vec![0f32; 100];
    mosr_kernels::dropout_mask(&mut d, 1.0, 1);
    assert!(d.iter().all(|&v| v == 1.0));
}

#[test]
fn kernels_few_rows_many_equals_separate_products_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // q/k/v- and gate/up-like widths, one serial (small), one split by k, one by columns.
    let (rows, k) = (8, 576);
    let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let widths = [576usize, 192, 192, 1536, 4160];
    let ws: Vec<Vec<f32>> = widths
        .iter()
        .map(|&n| (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut together: Vec<Vec<f32>> = widths.iter().map(|&n| vec![f32::NAN; rows * n]).collect();
    let mut products: Vec<mosr_kernels::Product<'_>> = ws
        .iter()
        .zip(&widths)
        .zip(together.iter_mut())
        .map(|((w, &n), out)| mosr_kernels::Product { w, n, out })
        .collect();
    mosr_kernels::few_rows_many(&x, rows, k, &mut products);
    for ((w, &n), got) in ws.iter().zip(&widths).zip(&together) {
        let mut alone = vec![f32::NAN; rows * n];
        few_rows(&x, rows, k, w, n, &mut alone);
        assert!(
            alone == *got,
            "width {n}: fused and separate products differ"
        );
        let want = reference(&x, rows, k, w, n);
        assert!(got.iter().zip(&want).all(|(g, e)| (g - e).abs() < 1e-3));
    }
}

#[test]
fn kernels_decode_rms_norm_and_rope_hand_computed() {
    use mosr_kernels::decode::{rms_norm, rope};
    // Row [3, 4]: mean square 12.5, eps 0.5 -> 1/sqrt(13) · x · w.
    let mut out = [0f32; 4];
    rms_norm(&[3.0, 4.0, 0.0, 2.0], &[1.0, 2.0], 0.5, &mut out);
    let a = 1.0 / 13f32.sqrt();
    let b = 1.0 / 2.5f32.sqrt();
    for (got, want) in out.iter().zip([3.0 * a, 8.0 * a, 0.0, 4.0 * b]) {
        assert!((got - want).abs() < 1e-6, "{out:?}");
    }
    // Two heads of 4: pairs (x0, x2) and (x1, x3) rotate by the angles of cos/sin.
    let mut x = [1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 1.0];
    rope(&mut x, &[0.0, 1.0], &[1.0, 0.0]);
    // Pair 0 by 90°: (1, 3) -> (-3, 1); pair 1 by 0°: unchanged.
    assert_eq!(x, [-3.0, 2.0, 1.0, 4.0, 0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn kernels_decode_attention_matches_f64_reference() {
    // Head sizes without a vector path (20) and with one (64, 128), query heads per key/value
    // head from 1 to 7 (several passes of the vector path's head groups).
    for (heads, kv_heads, d) in [
        (6, 2, 20),
        (9, 3, 64),
        (14, 2, 64),
        (4, 4, 64),
        (8, 2, 128),
        (6, 2, 128),
    ] {
        check_attention(heads, kv_heads, d);
    }
}

fn check_attention(heads: usize, kv_heads: usize, d: usize) {
    use mosr_kernels::decode::{AttentionShape, attention};
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (rows, cap, len) = (3, 21, 19);
    let q: Vec<f32> = (0..rows * heads * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let k: Vec<f32> = (0..rows * kv_heads * cap * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let v: Vec<f32> = (0..rows * kv_heads * cap * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    // Row 1 has two padding keys; row 2 masks everything but its own (last) key.
    let attend = |r: usize, j: usize| match r {
        1 => j >= 2,
        2 => false,
        _ => true,
    };
    let shape = AttentionShape {
        rows,
        heads,
        kv_heads,
        head_dim: d,
        capacity: cap,
        len,
    };
    let mut out = vec![f32::NAN; q.len()];
    attention(&q, &k, &v, shape, &attend, &mut out);
    for r in 0..rows {
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let qh = &q[(r * heads + h) * d..][..d];
            let key = |j: usize| &k[((r * kv_heads + g) * cap + j) * d..][..d];
            let val = |j: usize| &v[((r * kv_heads + g) * cap + j) * d..][..d];
            let keys: Vec<usize> = (0..len).filter(|&j| j + 1 == len || attend(r, j)).collect();
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    qh.iter()
                        .zip(key(j))
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for c in 0..d {
                let want: f64 = keys
                    .iter()
                    .zip(&s)
                    .map(|(&j, x)| (x - m).exp() / z * val(j)[c] as f64)
                    .sum();
                let got = out[(r * heads + h) * d + c];
                assert!(
                    (got as f64 - want).abs() < 1e-5,
                    "{heads}/{kv_heads} heads of {d}: row {r} head {h} col {c}: {got} vs {want}"
                );
            }
        }
    }
    // Row 2 sees only its own key: the output is that value exactly.
    let own = &v[((2 * kv_heads) * cap + len - 1) * d..][..d];
    assert_eq!(&out[(2 * heads) * d..][..d], own);
}

/// The fused SwiGLU of the training device (`mosr_lm::fused`) against burn's autodiff of
/// `silu(gate) · up`: values and both gradients, contiguous and strided inputs; and the plain
/// device's forward equal to the training device's bit for bit.
#[test]
fn kernels_fused_swiglu_matches_burn_autodiff() {
    use burn::tensor::activation::silu;
    let dev = mosr_lm::Device::flex().autodiff();
    let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1.0),
                "{what}[{i}]: fused {x}, burn {y}"
            );
        }
    };
    let data = |t: Tensor<3>| t.into_data().try_into_vec_as::<f32>().unwrap();
    for strided in [false, true] {
        let gate = Tensor::<3>::random([2, 5, 70], Distribution::Normal(0.0, 3.0), &dev);
        let up = Tensor::<3>::random([2, 5, 70], Distribution::Normal(0.0, 1.0), &dev);
        let (gate, up) = if strided {
            (gate.swap_dims(1, 2), up.swap_dims(1, 2))
        } else {
            (gate, up)
        };
        let (gate, up) = (gate.require_grad(), up.require_grad());
        let w = Tensor::<3>::random(gate.dims(), Distribution::Normal(0.0, 1.0), &dev);
        let fused = mosr_lm::fused::swiglu(gate.clone(), up.clone());
        let composed = silu(gate.clone()) * up.clone();
        close(data(fused.clone()), data(composed.clone()), "value");
        let plain = mosr_lm::fused::swiglu(gate.clone().inner(), up.clone().inner());
        assert_eq!(
            plain.into_data().try_into_vec_as::<f32>().unwrap(),
            data(fused.clone()),
            "plain and training forwards differ"
        );
        let gf = (fused * w.clone()).sum().backward();
        let gc = (composed * w).sum().backward();
        let grad = |t: &Tensor<3>, g| {
            t.grad(g)
                .unwrap()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap()
        };
        close(grad(&gate, &gf), grad(&gate, &gc), "d gate");
        close(grad(&up, &gf), grad(&up, &gc), "d up");
    }
}

/// The training device's matmul (`mosr_lm::fused::matmul_2d`, gemm called directly) against
/// burn's: values and both gradients, with contiguous and transposed operands, a frozen
/// operand (no gradient asked), and the plain device equal to the training device bit for bit.
#[test]
fn kernels_fused_matmul_matches_burn_autodiff() {
    let dev = mosr_lm::Device::flex().autodiff();
    let data = |t: Tensor<2>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1.0),
                "{what}[{i}]: fused {x}, burn {y}"
            );
        }
    };
    // Shapes on both sides of the parallel threshold (192³ multiply-adds).
    for (m, k, n) in [(3, 5, 7), (300, 200, 250)] {
        for transposed in [false, true] {
            let a = if transposed {
                Tensor::<2>::random([k, m], Distribution::Default, &dev).transpose()
            } else {
                Tensor::<2>::random([m, k], Distribution::Default, &dev)
            };
            let b = if transposed {
                Tensor::<2>::random([n, k], Distribution::Default, &dev).transpose()
            } else {
                Tensor::<2>::random([k, n], Distribution::Default, &dev)
            };
            let w = Tensor::<2>::random([m, n], Distribution::Default, &dev);
            for frozen_b in [false, true] {
                let a = a.clone().require_grad();
                let b = if frozen_b {
                    b.clone()
                } else {
                    b.clone().require_grad()
                };
                let fused = mosr_lm::fused::matmul_2d(&a, &b).expect("flex device");
                let burn = a.clone().matmul(b.clone());
                close(data(fused.clone()), data(burn.clone()), "value");
                let plain = mosr_lm::fused::matmul_2d(&a.clone().inner(), &b.clone().inner());
                assert_eq!(
                    data_plain(plain.unwrap()),
                    data(fused.clone()),
                    "plain vs training"
                );
                let gf = (fused * w.clone()).sum().backward();
                let gb = (burn * w.clone()).sum().backward();
                let grad = |t: &Tensor<2>, g| data_plain(t.grad(g).unwrap());
                close(grad(&a, &gf), grad(&a, &gb), "d lhs");
                if frozen_b {
                    assert!(b.grad(&gf).is_none(), "a frozen operand gets no gradient");
                } else {
                    close(grad(&b, &gf), grad(&b, &gb), "d rhs");
                }
            }
        }
    }
}

fn data_plain(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// The fused RMSNorm (`mosr_lm::fused::rms_norm`) against burn's composition of the same
/// formula: values and the input's gradient, contiguous and strided, plain equal to training
/// bit for bit; a trainable weight is left to burn.
#[test]
fn kernels_fused_rms_norm_matches_burn_autodiff() {
    let dev = mosr_lm::Device::flex().autodiff();
    let data = |t: Tensor<3>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 2e-5 * x.abs().max(y.abs()).max(1.0),
                "{what}[{i}]: fused {x}, burn {y}"
            );
        }
    };
    let eps = 1e-5;
    // 70 rows of 40 (several parallel tasks of 64 rows), and 3 rows (one task).
    for (rows, strided) in [(70, false), (70, true), (3, false)] {
        let x = if strided {
            Tensor::<3>::random([2, 40, rows], Distribution::Normal(0.0, 2.0), &dev).swap_dims(1, 2)
        } else {
            Tensor::<3>::random([2, rows, 40], Distribution::Normal(0.0, 2.0), &dev)
        };
        let x = x.require_grad();
        let w = Tensor::<1>::random([40], Distribution::Normal(1.0, 0.3), &dev);
        let up = Tensor::<3>::random(x.dims(), Distribution::Default, &dev);
        let fused = mosr_lm::fused::rms_norm(&x, &w, eps).expect("flex device");
        let var = x.clone().powi_scalar(2).mean_dim(2);
        let burn = x.clone() * (var + eps).sqrt().recip() * w.clone().unsqueeze::<3>();
        close(data(fused.clone()), data(burn.clone()), "value");
        let plain = mosr_lm::fused::rms_norm(&x.clone().inner(), &w.clone().inner(), eps).unwrap();
        assert_eq!(
            plain.into_data().try_into_vec_as::<f32>().unwrap(),
            data(fused.clone()),
            "plain vs training"
        );
        let gf = (fused * up.clone()).sum().backward();
        let gb = (burn * up).sum().backward();
        let grad = |g| {
            x.grad(g)
                .unwrap()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap()
        };
        close(grad(&gf), grad(&gb), "d x");
    }
    let trainable = Tensor::<1>::ones([40], &dev).require_grad();
    let x = Tensor::<3>::ones([1, 2, 40], &dev);
    assert!(mosr_lm::fused::rms_norm(&x, &trainable, eps).is_none());
}

/// The value of a bf16 bit pattern.
fn bf16(bits: u16) -> f64 {
    f32::from_bits(u32::from(bits) << 16) as f64
}

#[test]
fn kernels_amx_split3_is_exact() {
    use mosr_kernels::amx::{parts_needed, split3};
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut values: Vec<f32> = (0..10_000)
        .map(|_| rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-20..20)))
        .collect();
    values.extend([
        0.0,
        -0.0,
        1.0,
        -1.5,
        f32::MAX,
        f32::MIN_POSITIVE,
        1.0 + f32::EPSILON,
    ]);
    for &x in &values {
        let p = split3(x);
        let sum = bf16(p[0]) + bf16(p[1]) + bf16(p[2]);
        assert_eq!(sum, x as f64, "{x:e} = {p:?}");
        // Parts shrink by at least 2^8 each: the split is the leading bits first.
        assert!(
            bf16(p[1]).abs() <= bf16(p[0]).abs() * 2f64.powi(-7),
            "{x:e}"
        );
        assert!(
            bf16(p[2]).abs() <= bf16(p[1]).abs() * 2f64.powi(-7),
            "{x:e}"
        );
    }
    assert_eq!(parts_needed(1.5), 1);
    assert_eq!(parts_needed(1.0 + 2f32.powi(-10)), 2);
    assert_eq!(parts_needed(1.0 + f32::EPSILON), 2);
    assert_eq!(parts_needed(1.0 + 2f32.powi(-8) + f32::EPSILON), 3);
    // An f16 scale times a 5-bit integer has at most 16 significant bits: two parts.
    let d = half_precision(0.000_123_4);
    assert!((0..32).all(|q| parts_needed(d * q as f32) <= 2));
}

/// `x` rounded to f16 precision (11 significant bits), as GGUF block scales are.
fn half_precision(x: f32) -> f32 {
    f32::from_bits((x.to_bits() + 0x1000) & 0xFFFF_E000)
}

#[test]
fn kernels_amx_matmul_matches_f64_reference() {
    use mosr_kernels::amx::{self, PackedWeight};
    if !amx::available() {
        eprintln!("kernels_amx_matmul_matches_f64_reference: no AMX on this machine, skipped");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // Rows and columns that fill whole tiles and ones that do not; K with a partial chunk;
    // weights exact in 1, 2 (Q4_1-like with block offsets) and 3 parts.
    for &(m, k, n) in &[
        (1, 32, 16),
        (17, 64, 40),
        (64, 96, 32),
        (33, 50, 70),
        (100, 576, 96),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        for kind in ["bf16", "q4_1", "f32"] {
            if kind == "q4_1" && k % 32 != 0 {
                continue;
            }
            let blocks = k / 32;
            let (rows, offsets): (Vec<f32>, Option<Vec<f32>>) = match kind {
                "bf16" => (
                    (0..n * k)
                        .map(|_| rng.random_range(-8i32..8) as f32 * 0.25)
                        .collect(),
                    None,
                ),
                "q4_1" => {
                    let d: Vec<f32> = (0..n * blocks)
                        .map(|_| half_precision(rng.random_range(1e-4f32..2e-2)))
                        .collect();
                    let o = (0..n * blocks)
                        .map(|_| half_precision(rng.random_range(-0.1f32..0.1)))
                        .collect();
                    let r = (0..n * k)
                        .map(|i| {
                            d[(i / k) * blocks + (i % k) / 32] * rng.random_range(0..16) as f32
                        })
                        .collect();
                    (r, Some(o))
                }
                _ => (
                    (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                    None,
                ),
            };
            let w = PackedWeight::pack(&rows, n, k, offsets.as_deref());
            let want_parts = match kind {
                "bf16" => 1,
                "q4_1" => 2,
                _ => 3,
            };
            assert_eq!(w.parts(), want_parts, "{kind}: parts");
            let got = amx::matmul(&x, m, &w);
            assert_eq!(got.len(), m * n);
            for r in 0..m {
                for c in 0..n {
                    let (mut exact, mut scale) = (0f64, 0f64);
                    for i in 0..k {
                        let wv = rows[c * k + i] as f64
                            + offsets
                                .as_ref()
                                .map_or(0.0, |o| o[c * blocks + i / 32] as f64);
                        exact += x[r * k + i] as f64 * wv;
                        scale += (x[r * k + i] as f64 * wv).abs();
                    }
                    let err = (got[r * n + c] as f64 - exact).abs();
                    assert!(
                        err <= 1e-6 * scale + 1e-30,
                        "{kind} {m}x{k}x{n} [{r},{c}]: {} vs {exact} (scale {scale})",
                        got[r * n + c]
                    );
                }
            }
            // Several weights over one split of the rows give the same bits.
            let many = amx::matmul_many(&x, m, &[&w, &w]);
            assert!(
                many.iter()
                    .all(|o| o.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()))
            );
        }
    }
}

#[test]
fn kernels_prefill_attention_matches_f64_reference() {
    use mosr_kernels::prefill::{CausalShape, causal_attention, supported};
    if !supported(64) {
        eprintln!("kernels_prefill_attention_matches_f64_reference: no AVX-512, skipped");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // Sequences shorter and longer than a block, grouped and plain heads, both head sizes.
    for &(batch, seq, heads, kv_heads, d) in &[
        (2, 5, 3, 1, 64),
        (3, 37, 9, 3, 64),
        (1, 20, 2, 2, 128),
        (2, 16, 4, 2, 128),
    ] {
        let rows = batch * seq;
        let mut fill =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (q, k, v) = (
            fill(rows * heads * d),
            fill(rows * kv_heads * d),
            fill(rows * kv_heads * d),
        );
        let half = d / 2;
        let angles: Vec<f32> = (0..rows * half).map(|i| (i % 97) as f32 * 0.37).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        // Left padding: row b starts 2b positions in (all-padding rows allowed).
        let valid: Vec<bool> = (0..rows).map(|r| r % seq >= 2 * (r / seq)).collect();
        let shape = CausalShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim: d,
        };
        let mut out = vec![f32::NAN; q.len()];
        causal_attention(&q, &k, &v, &cos, &sin, &valid, shape, &mut out);
        let rot = |x: &[f32], r: usize| -> Vec<f64> {
            let mut o = vec![0f64; d];
            for i in 0..half {
                let (c, s) = (cos[r * half + i] as f64, sin[r * half + i] as f64);
                o[i] = x[i] as f64 * c - x[i + half] as f64 * s;
                o[i + half] = x[i + half] as f64 * c + x[i] as f64 * s;
            }
            o
        };
        for b in 0..batch {
            for i in 0..seq {
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let qi = rot(&q[((b * seq + i) * heads + h) * d..][..d], b * seq + i);
                    let keys: Vec<usize> =
                        (0..=i).filter(|&j| valid[b * seq + j] || j == i).collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            let kj =
                                rot(&k[((b * seq + j) * kv_heads + g) * d..][..d], b * seq + j);
                            qi.iter().zip(&kj).map(|(a, c)| a * c).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = keys
                            .iter()
                            .zip(&e)
                            .map(|(&j, p)| {
                                p / sum * v[((b * seq + j) * kv_heads + g) * d + c] as f64
                            })
                            .sum();
                        let got = out[((b * seq + i) * heads + h) * d + c];
                        assert!(
                            (got as f64 - want).abs() < 2e-6,
                            "{batch}x{seq} h{h}/{heads} kv{kv_heads} d{d} [{b},{i},{c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
