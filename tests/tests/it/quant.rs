//! Quantized arithmetic (`mosr_kernels::quant`, `mosr_gguf::GgufFile::group_codes`): the
//! codes reproduce the dequantizer, the product equals its own arithmetic written out in f64
//! on every tile, row-block and group shape, and stays within the activation rounding of the
//! f32 product; the quantized forward stays near the exact one.

use mosr_kernels::quant::{
    Affine, GROUPS, QuantWeight, TileCodes, product, product_many, product_portable, products,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random weight `[n, k]` in groups of `group`, with codes below `levels`.
fn random_weight(
    rng: &mut ChaCha8Rng,
    n: usize,
    k: usize,
    group: usize,
    levels: u32,
) -> QuantWeight {
    let codes: Vec<u8> = (0..n * k)
        .map(|_| rng.random_range(0..levels) as u8)
        .collect();
    let groups = n * k / group;
    let scale: Vec<f32> = (0..groups)
        .map(|_| rng.random_range(-0.02f32..0.02))
        .collect();
    let offset: Vec<f32> = (0..groups)
        .map(|_| rng.random_range(-0.1f32..0.1))
        .collect();
    QuantWeight::new(n, k, group, levels.ilog2(), &codes, &scale, &offset)
}

/// The activations as the kernel rounds them: per group, `d = max |x| / 127`, ties to even.
fn quantized_activations(x: &[f32], group: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for g in x.chunks_exact(group) {
        let d = g.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(
            g.iter()
                .map(|v| d as f64 * (v * inv).round_ties_even().clamp(-127.0, 127.0) as f64),
        );
    }
    out
}

/// `a · Wᵀ` in f64 for `a [rows, k]`, `W` the weight's values.
fn reference(a: &[f64], rows: usize, w: &QuantWeight) -> Vec<f64> {
    let (k, n, wv) = (w.k(), w.n(), w.dequantize());
    let mut out = vec![0f64; rows * n];
    for r in 0..rows {
        for o in 0..n {
            out[r * n + o] = (0..k).map(|i| a[r * k + i] * wv[o * k + i] as f64).sum();
        }
    }
    out
}

#[test]
fn quant_product_matches_its_arithmetic_on_every_shape() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Full and partial tiles (n % 16), row blocks of 1..8 and more, one and many groups.
    for group in GROUPS {
        for &(rows, k, n, levels) in &[
            (1, 32, 16, 16),
            (3, 32, 5, 64),
            (8, 64, 33, 256),
            (9, 96, 16, 32),
            (17, 128, 40, 16),
            (40, 96, 70, 64),
            // Enough groups for several parallel rounding tasks.
            (300, 512, 17, 16),
            // Enough rows for several cache chunks of activations (64 rows at k = 4096).
            (150, 4096, 17, 16),
        ] {
            let w = random_weight(&mut rng, n, k, group, levels);
            let x: Vec<f32> = (0..rows * k)
                .map(|_| rng.random_range(-2f32..2.0))
                .collect();
            check_product(&w, &x, rows, group);
            check_product(&w, &ties_and_zeros(&mut rng, rows * k, group), rows, group);
        }
    }
}

/// Activations whose rounding is all ties and exact integers: each group's first value is
/// `127 / 4`, so `d = 1/4` and every other value (a multiple of 1/8) lands on a whole or a
/// half step; every fifth group is all zeros (`d = 0`).
fn ties_and_zeros(rng: &mut ChaCha8Rng, len: usize, group: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..len)
        .map(|_| rng.random_range(-254i32..=254) as f32 / 8.0)
        .collect();
    for (g, xs) in x.chunks_exact_mut(group).enumerate() {
        if g % 5 == 4 {
            xs.fill(0.0);
        } else {
            xs[0] = 127.0 / 4.0;
        }
    }
    x
}

/// `product` against the portable path (bit for bit), its own arithmetic in f64 and the
/// exact product within the activation rounding.
fn check_product(w: &QuantWeight, x: &[f32], rows: usize, group: usize) {
    let (k, n) = (w.k(), w.n());
    let mut out = vec![f32::NAN; rows * n];
    product(x, rows, w, &mut out);
    // A machine without VNNI computes the same bits.
    let mut portable = vec![f32::NAN; rows * n];
    product_portable(x, rows, w, &mut portable);
    assert_eq!(
        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "group {group}, {rows}x{k}x{n}: VNNI and portable paths differ"
    );
    let rounded = reference(&quantized_activations(x, group), rows, w);
    let exact = reference(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), rows, w);
    let norm = exact.iter().map(|v| v.abs()).fold(0f64, f64::max).max(1e-3);
    let shape = format!("group {group}, {rows}x{k}x{n}");
    for i in 0..rows * n {
        let got = out[i] as f64;
        assert!(
            (got - rounded[i]).abs() <= 1e-5 * norm,
            "{shape} [{i}]: {got} vs {}",
            rounded[i]
        );
        // Activation rounding: half a step of max|x|/127 per element at most.
        assert!(
            (got - exact[i]).abs() <= 0.02 * norm,
            "{shape} [{i}]: {got} vs exact {}",
            exact[i]
        );
    }
}

#[test]
fn quant_dequantize_is_scale_times_code_plus_offset() {
    let (n, k) = (21, 64);
    for group in GROUPS {
        let codes: Vec<u8> = (0..n * k).map(|i| (i * 37 % 256) as u8).collect();
        let scale: Vec<f32> = (0..n * k / group).map(|g| 0.01 * g as f32 - 0.3).collect();
        let offset: Vec<f32> = (0..n * k / group).map(|g| 0.5 - 0.02 * g as f32).collect();
        let d = QuantWeight::new(n, k, group, 8, &codes, &scale, &offset).dequantize();
        for o in 0..n {
            for i in 0..k {
                let g = o * (k / group) + i / group;
                assert_eq!(d[o * k + i], scale[g] * codes[o * k + i] as f32 + offset[g]);
            }
        }
    }
}

/// Codes of 4, 5 and 6 bits are kept as narrow as that (low nibbles two to a byte, one bit
/// plane per bit above them): the same values and the same product bits as one code per
/// byte, on the VNNI and the portable path, in the memory the width implies.
#[test]
fn quant_narrow_codes_equal_byte_codes() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for group in GROUPS {
        for bits in [4u32, 5, 6] {
            let (rows, n, k) = (11, 37, 128);
            let codes: Vec<u8> = (0..n * k)
                .map(|_| rng.random_range(0..1u8 << bits))
                .collect();
            let affine = |rng: &mut ChaCha8Rng| -> Vec<f32> {
                (0..n * k / group)
                    .map(|_| rng.random_range(-0.1f32..0.1))
                    .collect()
            };
            let (scale, offset) = (affine(&mut rng), affine(&mut rng));
            let narrow = QuantWeight::new(n, k, group, bits, &codes, &scale, &offset);
            let bytes = QuantWeight::new(n, k, group, 8, &codes, &scale, &offset);
            assert_eq!((narrow.bits(), bytes.bits()), (bits, 8));
            let ratio = narrow.bytes() as f64 / bytes.bytes() as f64;
            let per_weight = |b: u32| b as f64 / 8.0 + 8.0 / group as f64;
            let want = per_weight(bits) / per_weight(8);
            let shape = format!("group {group}, {bits} bits");
            assert!((ratio - want).abs() < 1e-9, "{shape}: {ratio} vs {want}");
            assert_eq!(narrow.dequantize(), bytes.dequantize(), "{shape}");
            let x: Vec<f32> = (0..rows * k)
                .map(|_| rng.random_range(-2f32..2.0))
                .collect();
            let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            product(&x, rows, &narrow, &mut a);
            product(&x, rows, &bytes, &mut b);
            assert_eq!(a, b, "{shape}");
            product_portable(&x, rows, &narrow, &mut a);
            assert_eq!(a, b, "{shape}, portable");
        }
    }
}

/// A weight keeping its scales and offsets as `affine` says (f16 values, or the K-quants'
/// `unit · count` with units per block of `per` groups), and the same weight with them as f32.
fn narrow_pair(
    rng: &mut ChaCha8Rng,
    (n, k): (usize, usize),
    (group, bits): (usize, u32),
    affine: Affine,
) -> (QuantWeight, QuantWeight) {
    let groups = k / group;
    let codes: Vec<u8> = (0..n * k)
        .map(|_| rng.random_range(0..1u16 << bits) as u8)
        .collect();
    // Values with 11 significant bits (f16's), both signs and zero.
    let half = |rng: &mut ChaCha8Rng, len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| match rng.random_range(0..8) {
                0 => 0.0,
                _ => rng.random_range(-1024i32..1024) as f32 / 65536.0,
            })
            .collect()
    };
    let count = |rng: &mut ChaCha8Rng| -> Vec<i8> {
        (0..n * groups)
            .map(|_| rng.random_range(-128..=127i32) as i8)
            .collect()
    };
    let mut t = TileCodes {
        codes,
        ..TileCodes::default()
    };
    match affine {
        Affine::Groups => unreachable!("the f32 layout is the reference"),
        Affine::Half { times } => {
            t.scale = half(rng, n * groups);
            t.offset = match times {
                Some(m) => t.scale.iter().map(|s| s * m).collect(),
                None => half(rng, n * groups),
            };
        }
        Affine::Factored { per, shared } => {
            let blocks = groups / per;
            (t.scale_unit, t.offset_unit) = (half(rng, n * blocks), half(rng, n * blocks));
            t.scale_count = count(rng);
            t.offset_count = if shared { Vec::new() } else { count(rng) };
            let of = |units: &[f32], counts: &[i8]| -> Vec<f32> {
                (0..n * groups)
                    .map(|i| {
                        units[(i / groups) * blocks + (i % groups) / per] * f32::from(counts[i])
                    })
                    .collect()
            };
            t.scale = of(&t.scale_unit, &t.scale_count);
            let offset_count = if shared {
                &t.scale_count
            } else {
                &t.offset_count
            };
            t.offset = of(&t.offset_unit, offset_count);
        }
    }
    let narrow = QuantWeight::whole(n, k, (group, bits), affine, &t);
    let plain = QuantWeight::new(n, k, group, bits, &t.codes, &t.scale, &t.offset);
    (narrow, plain)
}

/// Scales and offsets kept as narrow as a file stores them (f16, or the K-quants' `unit ·
/// count`) give the same product bits as the f32 ones they stand for, on the VNNI and the
/// portable path, every row count and partial tiles, in the bytes the layout implies (Q5_0
/// 5.5 bits per weight instead of 7, Q4_K 4.75 instead of 6, Q6_K 6.75 instead of 10).
#[test]
fn quant_narrow_scales_give_the_same_bits_as_f32_ones() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let factored = |per, shared| Affine::Factored { per, shared };
    let cases = [
        (32, 4, factored(8, false)),
        (32, 5, factored(8, false)),
        (16, 6, factored(16, true)),
        (32, 8, factored(2, true)),
        (32, 5, Affine::Half { times: Some(-16.0) }),
        (
            32,
            8,
            Affine::Half {
                times: Some(-128.0),
            },
        ),
        (32, 4, Affine::Half { times: None }),
        (16, 6, Affine::Half { times: None }),
    ];
    for (group, bits, affine) in cases {
        let (n, k) = (37, 512);
        let (f, p) = narrow_pair(&mut rng, (n, k), (group, bits), affine);
        let shape = format!("group {group}, {bits} bits, {affine:?}");
        assert_eq!(f.affine_kind(), affine);
        for o in 0..n {
            for g in 0..k / group {
                let (a, b) = (f.affine(o, g), p.affine(o, g));
                assert_eq!(
                    (a.0.to_bits(), a.1.to_bits()),
                    (b.0.to_bits(), b.1.to_bits()),
                    "{shape}"
                );
            }
        }
        assert_eq!(f.dequantize(), p.dequantize(), "{shape}");
        // Bytes per weight: the codes, then per group two f16 or one, or one or two counts
        // and the units (8 bytes per block of `per` groups); against 8 bytes per group.
        let per_group = match affine {
            Affine::Half { times } => {
                if times.is_some() {
                    2.0
                } else {
                    4.0
                }
            }
            Affine::Factored { per, shared } => (if shared { 1.0 } else { 2.0 }) + 8.0 / per as f64,
            Affine::Groups => unreachable!(),
        };
        let want = bits as f64 / 8.0 + per_group / group as f64;
        let got = f.bytes() as f64 / (n.next_multiple_of(16) * k) as f64;
        assert!(
            (got - want).abs() < 1e-9,
            "{shape}: {got} bytes per weight, not {want}"
        );
        assert!(f.bytes() < p.bytes(), "{shape}");
        for rows in [1, 3, 8, 19] {
            let x: Vec<f32> = (0..rows * k)
                .map(|_| rng.random_range(-2f32..2.0))
                .collect();
            let (mut a, mut b) = (vec![f32::NAN; rows * n], vec![f32::NAN; rows * n]);
            product(&x, rows, &f, &mut a);
            product(&x, rows, &p, &mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{shape}, {rows} rows");
            product_portable(&x, rows, &f, &mut a);
            assert_eq!(bits(&a), bits(&b), "{shape}, {rows} rows, portable");
        }
    }
}

/// Every coded tensor of both fixtures keeps its scales and offsets as narrow as the file
/// does: f16 for Q4_0-Q8_0 (the file's bytes exactly, tiles of 16 rows aside), units and
/// counts for the K-quants; the same values as the f32 layout (checked as each is built), and
/// the same product bits on one tensor of each type.
#[test]
fn quant_scales_are_kept_as_narrow_as_the_file_stores_them() {
    use mosr_lm::weights::{affine_of, tile_codes};
    for model in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let path = mosr_tests::model_path(model);
        let file = mosr_gguf::GgufFile::open(&path).unwrap();
        let mut multiplied = std::collections::BTreeSet::new();
        for info in file.tensors() {
            let Some(g) = file.group_codes(&info.name).unwrap() else {
                continue;
            };
            let (ty, name) = (info.ggml_type, &info.name);
            let (k, n) = (
                info.dims[0] as usize,
                info.n_elements() / info.dims[0] as usize,
            );
            let (shape, affine) = ((g.group, g.bits), affine_of(&g));
            let plain = QuantWeight::new(n, k, g.group, g.bits, &g.codes, &g.scale, &g.offset);
            let narrow = QuantWeight::whole(n, k, shape, affine, &tile_codes(g));
            let rows = n.next_multiple_of(16);
            let want = match affine {
                Affine::Half { .. } => rows * k / ty.block_size() * ty.type_size(),
                Affine::Factored { per, shared } => {
                    let (group, bits) = (shape.0, shape.1 as usize);
                    let counts = if shared { 1 } else { 2 };
                    rows * k * bits / 8 + rows * k / group * counts + rows * k / (per * group) * 8
                }
                Affine::Groups => panic!("{model} {name}: kept as f32"),
            };
            assert_eq!(narrow.bytes(), want, "{model} {name} ({ty})");
            assert_eq!(narrow.dequantize(), plain.dequantize(), "{model} {name}");
            if n <= 1024 && multiplied.insert(ty.name()) {
                let rows = 9;
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0)
                    .collect();
                let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
                product(&x, rows, &narrow, &mut a);
                product(&x, rows, &plain, &mut b);
                assert_eq!(a, b, "{model} {name}");
            }
        }
        // SmolLM2's Q4_1 (and Q8_0); the 0.5B model's Q5_0, Q8_0 and, where rows of 896
        // are whole 256-blocks (only the down projections), Q4_K and Q6_K.
        let want: &[&str] = match model {
            "smollm2-135m-instruct" => &["Q4_1"],
            _ => &["Q4_K", "Q5_0", "Q6_K", "Q8_0"],
        };
        for ty in want {
            assert!(multiplied.contains(ty), "{model}: {multiplied:?}");
        }
    }
}

/// A loader whose factors do not give its scales would change products silently: refused.
#[test]
#[should_panic(expected = "unit · count gives")]
fn quant_factors_that_disagree_with_the_scales_are_refused() {
    let (n, k) = (3, 256);
    let t = TileCodes {
        codes: vec![1; n * k],
        scale: vec![0.5; n * 8],
        offset: vec![-0.25; n * 8],
        scale_unit: vec![0.25; n],
        offset_unit: vec![-0.125; n],
        scale_count: vec![2; n * 8],
        offset_count: vec![3; n * 8],
    };
    QuantWeight::whole(
        n,
        k,
        (32, 4),
        Affine::Factored {
            per: 8,
            shared: false,
        },
        &t,
    );
}

/// A scale the layout cannot keep as an f16 would change products silently: refused.
#[test]
#[should_panic(expected = "are not as stored")]
fn quant_scales_that_are_not_f16_values_are_refused() {
    let (n, k) = (2, 32);
    let (scale, offset) = ([0.1f32, 0.5], [-0.8f32, -4.0]);
    let t = TileCodes {
        codes: vec![1; n * k],
        scale: scale.to_vec(),
        offset: offset.to_vec(),
        ..TileCodes::default()
    };
    QuantWeight::whole(n, k, (32, 4), Affine::Half { times: Some(-8.0) }, &t);
}

#[test]
#[should_panic(expected = "does not fit in 4 bits")]
fn quant_codes_wider_than_their_bits_are_refused() {
    let (n, k) = (2, 32);
    let mut codes = vec![3u8; n * k];
    codes[40] = 16;
    QuantWeight::new(n, k, 32, 4, &codes, &[0.1; 2], &[0.0; 2]);
}

#[test]
fn quant_product_many_and_products_equal_separate_products_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (rows, k) = (5, 64);
    // Mixed group sizes, as a block whose v projection is Q6_K beside Q4_K q and k.
    let ws: Vec<QuantWeight> = [(16, 32), (40, 16), (7, 32)]
        .iter()
        .map(|&(n, group)| random_weight(&mut rng, n, k, group, 16))
        .collect();
    let x: Vec<f32> = (0..rows * k)
        .map(|_| rng.random_range(-1f32..1.0))
        .collect();
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; rows * w.n()]).collect();
    let mut pairs: Vec<(&QuantWeight, &mut [f32])> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, o)| (w, o.as_mut_slice()))
        .collect();
    product_many(&x, rows, &mut pairs);
    let refs: Vec<&QuantWeight> = ws.iter().collect();
    let fresh = products(&x, rows, &refs);
    for ((w, many), new) in ws.iter().zip(&outs).zip(&fresh) {
        // Every element is written (`products` hands out outputs it never zeroed).
        let mut one = vec![f32::NAN; rows * w.n()];
        product(&x, rows, w, &mut one);
        assert_eq!(&one, many);
        assert_eq!(new, many);
    }
}

/// Every integer-coded tensor of both fixture models: `scale · code + offset` equals the
/// dequantizer's value to one rounding (exactly where the type adds its offset last).
#[test]
fn quant_group_codes_reproduce_the_dequantizer_on_real_files() {
    for model in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let path = mosr_tests::model_path(model);
        let file = mosr_gguf::GgufFile::open(&path).unwrap();
        let mut coded = 0;
        for info in file.tensors() {
            let Some(c) = file.group_codes(&info.name).unwrap() else {
                continue;
            };
            let values = file.dequantize(&info.name).unwrap();
            for (i, v) in values.iter().enumerate() {
                let g = i / c.group;
                let got = c.scale[g] * c.codes[i] as f32 + c.offset[g];
                let tol = 2.0 * f32::EPSILON * (c.offset[g].abs() + v.abs());
                assert!(
                    (got - v).abs() <= tol,
                    "{model} {} [{i}]: {got} vs {v} ({})",
                    info.name,
                    info.ggml_type
                );
            }
            coded += 1;
        }
        assert!(coded > 50, "{model}: {coded} coded tensors");
    }
}

/// A quantized load builds each weight's codes a tile of rows at a time
/// (`QuantWeight::from_rows`, undoing Llama's Q/K row permutation row by row): the result
/// equals the weight built from the whole tensor's codes at once, on every coded projection,
/// the embedding and the head of both fixture models.
#[test]
fn quant_loads_build_the_codes_of_the_whole_tensor() {
    use mosr_kernels::quant::QuantWeight;
    use mosr_lm::weights::{affine_of, hf_to_gguf_name, tile_codes, unpermute_rows};
    for model in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let path = mosr_tests::model_path(model);
        let file = mosr_gguf::GgufFile::open(&path).unwrap();
        let device = mosr_lm::Device::flex();
        let lm = mosr_lm::LanguageModel::open_with(&path, &device, mosr_lm::Arithmetic::Quantized)
            .unwrap();
        let c = &lm.config;
        let whole = |hf: &str, n: usize, k: usize| {
            let name = hf_to_gguf_name(hf).unwrap();
            let g = file.group_codes(&name).unwrap().unwrap();
            let heads = match c.arch {
                mosr_lm::Arch::Qwen2 => None,
                _ if name.ends_with("attn_q.weight") => Some(c.num_heads),
                _ if name.ends_with("attn_k.weight") => Some(c.num_kv_heads),
                _ => None,
            };
            let (shape, affine) = ((g.group, g.bits), affine_of(&g));
            let mut t = tile_codes(g);
            if let Some(h) = heads {
                let groups = k / shape.0;
                let blocks = t.scale_unit.len() / n;
                fn perm<T: Copy + Default>(v: &mut Vec<T>, shape: [usize; 2], h: usize) {
                    if !v.is_empty() {
                        *v = unpermute_rows(v, &shape, h);
                    }
                }
                perm(&mut t.codes, [n, k], h);
                perm(&mut t.scale, [n, groups], h);
                perm(&mut t.offset, [n, groups], h);
                perm(&mut t.scale_count, [n, groups], h);
                perm(&mut t.offset_count, [n, groups], h);
                perm(&mut t.scale_unit, [n, blocks], h);
                perm(&mut t.offset_unit, [n, blocks], h);
            }
            QuantWeight::whole(n, k, shape, affine, &t)
        };
        let mut checked = 0;
        for (i, block) in lm.net.layers.iter().enumerate() {
            for (m, lin) in block.linears() {
                let Some(q) = &lin.quant else { continue };
                let mlp = ["gate_proj", "up_proj", "down_proj"].contains(&m);
                let part = if mlp { "mlp" } else { "self_attn" };
                let hf = format!("model.layers.{i}.{part}.{m}.weight");
                assert!(**q == whole(&hf, q.n(), q.k()), "{model} {hf}");
                checked += 1;
            }
        }
        let embed = lm.net.embed_quant.as_ref().expect("coded embedding");
        assert!(**embed == whole("model.embed_tokens.weight", c.vocab_size, c.hidden_size));
        let head = lm.net.head_quant.as_ref().expect("coded head");
        let head_name = match c.tie_word_embeddings {
            true => "model.embed_tokens.weight",
            false => "lm_head.weight",
        };
        assert!(
            **head == whole(head_name, c.vocab_size, c.hidden_size),
            "{model} head"
        );
        assert!(checked > 50, "{model}: {checked} coded projections");
    }
}

/// The fixture's greedy-generation prompts (token ids) of `model`.
fn fixture_prompts(model: &str) -> Vec<Vec<u32>> {
    let fx = mosr_tests::fixture(model, "generate");
    let gens = fx["generations"].as_array().unwrap();
    gens.iter()
        .map(|g| mosr_tests::ids(&g["input_ids"]))
        .collect()
}

/// Last-position logits of `prompts`, one batch, left-padded.
fn last_logits(lm: &mosr_lm::LanguageModel, prompts: &[Vec<u32>]) -> Vec<f32> {
    use mosr_lm::{ForwardOptions, Logits, TokenBatch};
    let batch = TokenBatch::left_padded(prompts, lm.pad_id);
    let opts = ForwardOptions {
        logits: Logits::Last,
        ..Default::default()
    };
    let out = lm.net.forward(&batch, None, opts).logits.unwrap();
    out.into_data().try_into_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Largest |Δ logit| allowed between the quantized and the exact forward on the fixture
/// prompts (docs/performance.md): measured 1.40 on SmolLM2-135M (Q4_1, the most sensitive
/// model we have) and 0.26 on Qwen2.5-Coder-0.5B (Q4_K/Q6_K), 2026-12-04.
const LOGIT_TOLERANCE: [(&str, f32); 2] = [
    ("smollm2-135m-instruct", 2.0),
    ("qwen2.5-coder-0.5b-instruct", 0.5),
];

#[test]
fn quant_forward_stays_near_the_exact_one_and_greedy_agreement_is_reported() {
    use mosr_lm::generate::{GenerateConfig, generate};
    use mosr_lm::{Arithmetic, LanguageModel};
    let dev = mosr_lm::Device::flex();
    for (model, tolerance) in LOGIT_TOLERANCE {
        let path = mosr_tests::model_path(model);
        let exact = LanguageModel::open(&path, &dev).unwrap();
        let quant = LanguageModel::open_with(&path, &dev, Arithmetic::Quantized).unwrap();
        let coded = quant
            .net
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .filter(|(_, l)| l.quant.is_some())
            .count();
        assert_eq!(
            coded,
            7 * quant.config.num_layers,
            "{model}: every projection has codes"
        );
        assert!(quant.net.head_quant.is_some() && exact.net.head_quant.is_none());
        let fx = mosr_tests::fixture(model, "generate");
        let gens = fx["generations"].as_array().unwrap();
        let prompts = fixture_prompts(model);
        let diff = max_abs_diff(
            &last_logits(&exact, &prompts),
            &last_logits(&quant, &prompts),
        );
        assert!(
            diff <= tolerance,
            "{model}: max |Δ logit| {diff} > {tolerance}"
        );
        let cfg = GenerateConfig {
            max_new_tokens: 24,
            ..Default::default()
        };
        let (ge, gq) = (
            generate(&exact, &prompts, &cfg).unwrap(),
            generate(&quant, &prompts, &cfg).unwrap(),
        );
        for ((g, e), q) in gens.iter().zip(&ge).zip(&gq) {
            let same = e
                .tokens
                .iter()
                .zip(&q.tokens)
                .take_while(|(x, y)| x == y)
                .count();
            eprintln!(
                "{model} {}: greedy tokens agree for {same} of {} (exact {:?} / quantized {:?})",
                g["name"],
                e.tokens.len(),
                e.text,
                q.text
            );
        }
        eprintln!("{model}: max |Δ logit| {diff} (tolerance {tolerance})");
    }
}

/// Saves an adapter with a non-zero B on blocks 0-2 of `exact` under `dir`; returns a
/// function giving any load of the same model with that adapter loaded.
fn save_random_adapter(
    exact: &mosr_lm::LanguageModel,
    model: &str,
    dir: &std::path::Path,
) -> impl Fn(&mosr_lm::LanguageModel) -> mosr_lm::LanguageModel {
    use burn::module::Param;
    use burn::tensor::Tensor;
    use mosr_lm::{LanguageModel, LoraConfig};
    let dev = mosr_lm::Device::flex();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        layers: vec![0, 1, 2],
        ..Default::default()
    };
    let mut net = exact.net.clone().attach_lora(&cfg, 7).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for block in net.layers.iter_mut().take(3) {
        for (_, l) in block.linears_mut() {
            let dims = l.lora_b.as_ref().unwrap().val().dims();
            let b: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| rng.random_range(-0.3f32..0.3))
                .collect();
            let t = Tensor::from_data(burn::tensor::TensorData::new(b, dims), &dev);
            l.lora_b = Some(Param::from_tensor(t));
        }
    }
    mosr_lm::adapter::save(&net, &cfg, dir, Some(model), None).unwrap();
    let dir = dir.to_path_buf();
    move |lm: &LanguageModel| {
        let (net, _) = mosr_lm::adapter::load(lm.net.clone(), &dir, None).unwrap();
        LanguageModel {
            net,
            tokenizer: lm.tokenizer.clone(),
            chat: lm.chat.clone(),
            config: lm.config.clone(),
            path: lm.path.clone(),
            pad_id: lm.pad_id,
        }
    }
}

/// A LoRA adapter on a quantized load: its update is added in f32 beside the codes on the
/// prefill (burn) path and the decode step alike, moving the logits as it moves the exact
/// model's; the f32 weights are not kept.
#[test]
fn quant_adapter_update_is_added_beside_the_codes() {
    use mosr_lm::generate::{GenerateConfig, generate};
    use mosr_lm::{Arithmetic, LanguageModel};
    let dev = mosr_lm::Device::flex();
    let model = "smollm2-135m-instruct";
    let path = mosr_tests::model_path(model);
    let exact = LanguageModel::open(&path, &dev).unwrap();
    let quant = LanguageModel::open_with(&path, &dev, Arithmetic::Quantized).unwrap();
    let q0 = &quant.net.layers[0].self_attn.q_proj;
    assert_eq!(q0.weight.val().dims(), [0, 0], "codes only, no f32 copy");
    assert_eq!((q0.d_in(), q0.d_out()), (576, 576));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("quant-adapter");
    let with = save_random_adapter(&exact, model, &dir);
    let (exact_ad, quant_ad) = (with(&exact), with(&quant));
    let prompts = fixture_prompts(model);
    let logits = |lm: &LanguageModel| last_logits(lm, &prompts);
    let (e0, e1, q0, q1) = (
        logits(&exact),
        logits(&exact_ad),
        logits(&quant),
        logits(&quant_ad),
    );
    let (shift_exact, shift_quant) = (max_abs_diff(&e0, &e1), max_abs_diff(&q0, &q1));
    assert!(
        shift_exact > 2.0 && shift_quant > 2.0,
        "the adapter moves the logits: {shift_exact} / {shift_quant}"
    );
    let gap = max_abs_diff(&e1, &q1);
    assert!(gap <= LOGIT_TOLERANCE[0].1, "adapted: max |Δ logit| {gap}");
    // The decode step (host path) with the adapter on a quantized load generates.
    let cfg = GenerateConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let (ge, gq) = (
        generate(&exact_ad, &prompts, &cfg).unwrap(),
        generate(&quant_ad, &prompts, &cfg).unwrap(),
    );
    for (e, q) in ge.iter().zip(&gq) {
        assert!(!q.tokens.is_empty());
        eprintln!("adapted: exact {:?} / quantized {:?}", e.text, q.text);
    }
    eprintln!(
        "adapter shifts logits by {shift_exact} (exact) / {shift_quant} (quantized); adapted gap {gap}"
    );
}

/// SmolLM2 opened exact, and quantized with a random non-zero adapter saved under
/// `CARGO_TARGET_TMPDIR/<name>` (see [`save_random_adapter`]).
fn smollm2_quantized_with_adapter(name: &str) -> (mosr_lm::LanguageModel, mosr_lm::LanguageModel) {
    use mosr_lm::{Arithmetic, LanguageModel};
    let dev = mosr_lm::Device::flex();
    let model = "smollm2-135m-instruct";
    let path = mosr_tests::model_path(model);
    let exact = LanguageModel::open(&path, &dev).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let quant = {
        let with = save_random_adapter(&exact, model, &dir);
        with(&LanguageModel::open_with(&path, &dev, Arithmetic::Quantized).unwrap())
    };
    (exact, quant)
}

/// Token ids of a synthetic prompt (sequence `b`, `len` tokens), spread over the vocabulary.
fn synthetic_ids(b: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|t| (1000 + (b * 7919 + t * 104_729) % (vocab - 2000)) as u32)
        .collect()
}

/// A quantized forward computes each sequence on its own: a batch large enough that the MLP
/// runs in pieces (9 x 128 rows, pieces of 1024) gives every sequence the hidden states and
/// logits it gets alone, bit for bit, with an adapter's update on the codes.
#[test]
fn quant_batch_in_pieces_equals_each_sequence_alone() {
    use mosr_lm::{ForwardOptions, Logits, TokenBatch};
    let (_exact, lm) = smollm2_quantized_with_adapter("quant-pieces");
    let (rows, seq) = (9, 128);
    let vocab = lm.config.vocab_size;
    let ids: Vec<Vec<u32>> = (0..rows).map(|b| synthetic_ids(b, seq, vocab)).collect();
    let opts = ForwardOptions {
        hidden: true,
        logits: Logits::Last,
        adapter: true,
        ..Default::default()
    };
    let states = |prompts: &[Vec<u32>]| {
        let out = lm
            .net
            .forward(&TokenBatch::left_padded(prompts, lm.pad_id), None, opts);
        let last = out.hidden.last().unwrap().clone();
        let f = |t: burn::tensor::Tensor<3>| t.into_data().try_into_vec::<f32>().unwrap();
        (f(last), f(out.logits.unwrap()))
    };
    let (hidden, logits) = states(&ids);
    let (h_row, l_row) = (seq * lm.config.hidden_size, vocab);
    for (b, prompt) in ids.iter().enumerate() {
        let (h, l) = states(std::slice::from_ref(prompt));
        assert!(
            h == hidden[b * h_row..][..h_row],
            "sequence {b}: hidden states"
        );
        assert!(l == logits[b * l_row..][..l_row], "sequence {b}: logits");
    }
}

/// A quantized pass that leaves padding out of its row-wise work (`ForwardOptions::
/// skip_padding`, the default) gives every token the bits of the padded pass: hidden states
/// and logits of a cache-less pass, the prefill that fills a KV cache, and the decode steps
/// after it (their cache holds zeros at padding instead of the pad token's values). Batches
/// of mixed lengths, one large enough that the MLP runs over pieces of the tokens' rows, with
/// an adapter's update on the codes; a batch whose tokens would change the adapter's gemm
/// path (80 rows, 50 tokens) keeps its padding.
#[test]
fn quant_padding_left_out_changes_no_token_bit() {
    use mosr_lm::{ForwardOptions, KvCache, Logits, TokenBatch};
    let (_exact, lm) = smollm2_quantized_with_adapter("quant-padding");
    let vocab = lm.config.vocab_size;
    let prompt = |b: usize, len: usize| synthetic_ids(b, len, vocab);
    let f = |t: burn::tensor::Tensor<3>| t.into_data().try_into_vec::<f32>().unwrap();
    let opts = |skip_padding, hidden, logits| ForwardOptions {
        hidden,
        logits,
        skip_padding,
        ..Default::default()
    };
    // (lengths, whether the padding is left out). 1030 tokens in 1350 positions: MLP pieces
    // of 1024 rows, the last 6 folded in.
    let cases = [
        (vec![40, 7, 90, 23], true),
        (vec![150, 150, 150, 150, 150, 150, 30, 50, 50], true),
        (vec![40, 10], false),
    ];
    for (lens, packs) in cases {
        let prompts: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(b, &n)| prompt(b, n))
            .collect();
        let batch = TokenBatch::left_padded(&prompts, lm.pad_id);
        let w = lm.config.hidden_size;
        let select = |v: &[f32], w: usize, real: bool| -> Vec<f32> {
            (0..batch.mask.len())
                .filter(|&i| batch.mask[i] == real)
                .flat_map(|i| v[i * w..(i + 1) * w].to_vec())
                .collect()
        };
        let pass = |skip| lm.net.forward(&batch, None, opts(skip, true, Logits::All));
        let (a, b) = (pass(true), pass(false));
        // Left out, the padding's states are the zeros it was laid out with.
        let pads = select(&f(a.hidden[1].clone()), w, false);
        assert_eq!(
            pads.iter().all(|&v| v == 0.0),
            packs,
            "{lens:?}: padding left out"
        );
        for (l, (x, y)) in a.hidden.into_iter().zip(b.hidden).enumerate() {
            assert!(
                select(&f(x), w, true) == select(&f(y), w, true),
                "{lens:?}: hidden {l}"
            );
        }
        let (x, y) = (f(a.logits.unwrap()), f(b.logits.unwrap()));
        assert!(
            select(&x, vocab, true) == select(&y, vocab, true),
            "{lens:?}: logits"
        );
        // Prefill into a cache, then two decode steps, each side on its own cache.
        let mut caches = [KvCache::default(), KvCache::default()];
        let mut step = batch.clone();
        for s in 0..3 {
            let [p, q] = &mut caches;
            let x = f(lm
                .net
                .forward(&step, Some(p), opts(true, false, Logits::Last))
                .logits
                .unwrap());
            let y = f(lm
                .net
                .forward(&step, Some(q), opts(false, false, Logits::Last))
                .logits
                .unwrap());
            assert!(x == y, "{lens:?}: step {s} logits");
            step = TokenBatch {
                ids: (0..lens.len())
                    .map(|r| (1000 + 31 * r + s) as u32)
                    .collect(),
                mask: vec![true; lens.len()],
                batch: lens.len(),
                seq: 1,
            };
        }
    }
}

/// The row counts between which an adapter's update keeps each row's bits
/// (`mosr_lm::cpu::same_row_arithmetic`, which leaving padding out and the MLP's pieces rely
/// on): a product of rank-wide output over a 576-deep input gives a row the same bits at 17 and
/// 64 rows, and at 65 and 1100, but not across 64 | 65 (gemm's small-size path; if that
/// assertion fails, gemm has dropped it and `GEMM_SMALL_ROWS` can go).
#[test]
fn adapter_products_keep_row_bits_within_gemm_paths() {
    use burn::tensor::{Tensor, TensorData};
    use mosr_lm::cpu::{GEMM_SMALL_ROWS, project, same_row_arithmetic};
    let dev = mosr_lm::Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (k, r) = (576, 16);
    let x: Vec<f32> = (0..1100 * k)
        .map(|_| rng.random_range(-1f32..1.0))
        .collect();
    let a: Vec<f32> = (0..k * r).map(|_| rng.random_range(-0.1f32..0.1)).collect();
    let a = Tensor::<2>::from_data(TensorData::new(a, [k, r]), &dev);
    let first_row = |m: usize| -> Vec<f32> {
        let xs = Tensor::<3>::from_data(TensorData::new(x[..m * k].to_vec(), [1, m, k]), &dev);
        let y = project(xs, a.clone(), None)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        y[..r].to_vec()
    };
    let small = GEMM_SMALL_ROWS;
    assert!(same_row_arithmetic(17, small) && same_row_arithmetic(small + 1, 1100));
    assert!(!same_row_arithmetic(small, small + 1) && !same_row_arithmetic(16, 17));
    assert_eq!(first_row(17), first_row(small), "gemm's small-size path");
    assert_eq!(first_row(small + 1), first_row(1100), "gemm's blocked path");
    assert_ne!(first_row(small), first_row(small + 1), "gemm's two paths");
}

/// On a quantized load a sequence decodes to the same bits in a batch of any size: 20 rows
/// (more than the few-row kernel's 16, still the host decode step) give rows 0, 7 and 19 the
/// logits they get alone, through a prefill and three decode steps, with an adapter. (Prompts
/// of more than 64 tokens: a prefill of fewer rows sums the adapter's update another way,
/// `mosr_lm::cpu::same_row_arithmetic`.)
#[test]
fn quant_decode_is_the_same_in_a_batch_of_any_size() {
    use mosr_lm::{ForwardOptions, KvCache, TokenBatch};
    let (_exact, lm) = smollm2_quantized_with_adapter("quant-decode-rows");
    let vocab = lm.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..20).map(|b| synthetic_ids(b, 70, vocab)).collect();
    let f = |t: burn::tensor::Tensor<3>| t.into_data().try_into_vec::<f32>().unwrap();
    // Each step's logits for the given rows of `prompts`.
    let run = |rows: &[usize]| -> Vec<Vec<f32>> {
        let mut cache = KvCache::default();
        let own: Vec<Vec<u32>> = rows.iter().map(|&r| prompts[r].clone()).collect();
        let mut step = TokenBatch::left_padded(&own, lm.pad_id);
        let mut out = Vec::new();
        for s in 0..4 {
            let o = lm
                .net
                .forward(&step, Some(&mut cache), ForwardOptions::default());
            out.push(f(o.logits.unwrap()));
            step = TokenBatch {
                ids: rows.iter().map(|&r| (2000 + 31 * r + s) as u32).collect(),
                mask: vec![true; rows.len()],
                batch: rows.len(),
                seq: 1,
            };
        }
        out
    };
    let all: Vec<usize> = (0..20).collect();
    let batch = run(&all);
    for r in [0, 7, 19] {
        let alone = run(&[r]);
        for (s, (a, b)) in alone.iter().zip(&batch).enumerate() {
            assert!(*a == b[r * vocab..][..vocab], "row {r}, step {s}");
        }
    }
}

/// A finished row leaves the batch and its KV cache (`generate`, where
/// `CausalLm::decodes_rows_alone`) without changing a bit of the rows that go on: after a
/// padded prefill of six prompts, a step with rows 1 and 4 finished (fed padding) and a step
/// with them dropped from the batch give the other rows the same logits, twice in a row, on
/// an exact load (at most 16 rows) and a quantized one with an adapter.
#[test]
fn finished_rows_leave_the_batch_with_the_same_bits() {
    use mosr_lm::{ForwardOptions, KvCache, TokenBatch};
    let (exact, quant) = smollm2_quantized_with_adapter("quant-finished");
    let f = |t: burn::tensor::Tensor<3>| t.into_data().try_into_vec::<f32>().unwrap();
    for lm in [&exact, &quant] {
        let vocab = lm.config.vocab_size;
        assert!(lm.net.decodes_rows_alone(6));
        let prompts: Vec<Vec<u32>> = (0..6)
            .map(|b| synthetic_ids(b, 20 + 9 * b, vocab))
            .collect();
        let mut kept = KvCache::default();
        let batch = TokenBatch::left_padded(&prompts, lm.pad_id);
        lm.net
            .forward(&batch, Some(&mut kept), ForwardOptions::default());
        let live = [0, 2, 3, 5];
        let mut dropped = kept.clone();
        dropped.select_rows(&live);
        for s in 0..2 {
            let id = |r: usize| (2000 + 31 * r + s) as u32;
            let padded = TokenBatch {
                ids: (0..6)
                    .map(|r| if live.contains(&r) { id(r) } else { lm.pad_id })
                    .collect(),
                mask: (0..6).map(|r| live.contains(&r)).collect(),
                batch: 6,
                seq: 1,
            };
            let fewer = TokenBatch {
                ids: live.iter().map(|&r| id(r)).collect(),
                mask: vec![true; live.len()],
                batch: live.len(),
                seq: 1,
            };
            let opts = ForwardOptions::default();
            let a = f(lm
                .net
                .forward(&padded, Some(&mut kept), opts)
                .logits
                .unwrap());
            let b = f(lm
                .net
                .forward(&fewer, Some(&mut dropped), opts)
                .logits
                .unwrap());
            for (i, &r) in live.iter().enumerate() {
                assert!(
                    a[r * vocab..][..vocab] == b[i * vocab..][..vocab],
                    "row {r}, step {s}"
                );
            }
        }
    }
}
