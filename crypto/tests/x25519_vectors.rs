//! X25519 against RFC 7748 and x25519-dalek, on every SIMD path this CPU has.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use lethe_crypto::x25519::{
    clamp, scalarmult_raw, scalarmult_raw_batch_with, x25519, x25519_batch,
    x25519_batch_same_scalar, x25519_batch_with, SimdPath,
};

fn hex(s: &str) -> [u8; 32] {
    assert_eq!(s.len(), 64);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Deterministic SplitMix64 corpus generator (no RNG dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for c in out.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

/// The paths to test; a path the CPU lacks is skipped with a note.
fn paths() -> Vec<SimdPath> {
    [SimdPath::Portable, SimdPath::Avx2, SimdPath::Ifma]
        .into_iter()
        .filter(|p| {
            let ok = p.is_supported();
            if !ok {
                eprintln!("note: skipping {p:?}: not supported by this CPU");
            }
            ok
        })
        .collect()
}

/// One X25519 on `path`, run as a full batch of 8 copies: a batch of one (or
/// of fewer lanes than a vector) may be sent to the serial path, and this
/// must exercise the vector code. All 8 lanes must agree.
fn x25519_on(path: SimdPath, k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let mut out = [[0u8; 32]; 8];
    x25519_batch_with(path, &[*k; 8], &[*u; 8], &mut out).unwrap();
    assert!(out.iter().all(|o| *o == out[0]), "{path:?}: lanes disagree");
    out[0]
}

fn dalek(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*k, *u)
}

const BASE: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 9;
    b
};

#[test]
fn rfc7748_single_vectors() {
    let cases = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for (k, u, r) in cases {
        let (k, u, r) = (hex(k), hex(u), hex(r));
        assert_eq!(x25519(&k, &u), r);
        for p in paths() {
            assert_eq!(x25519_on(p, &k, &u), r, "{p:?}");
        }
    }
}

#[test]
fn rfc7748_iterated_1_and_1000() {
    let after1 = hex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079");
    let after1000 = hex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51");
    for p in paths() {
        let (mut k, mut u) = (BASE, BASE);
        for i in 1..=1000 {
            let r = x25519_on(p, &k, &u);
            u = k;
            k = r;
            if i == 1 {
                assert_eq!(k, after1, "{p:?} after 1");
            }
        }
        assert_eq!(k, after1000, "{p:?} after 1000");
    }
}

#[test]
fn rfc7748_diffie_hellman() {
    let a = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let a_pub = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let b = hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let b_pub = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    for p in paths() {
        assert_eq!(x25519_on(p, &a, &BASE), a_pub, "{p:?}");
        assert_eq!(x25519_on(p, &b, &BASE), b_pub, "{p:?}");
        assert_eq!(x25519_on(p, &a, &b_pub), shared, "{p:?}");
        assert_eq!(x25519_on(p, &b, &a_pub), shared, "{p:?}");
    }
}

/// u-coordinates of small order on the curve or its twist, in canonical and
/// non-canonical (bit 255 set / >= p) spellings.
fn low_order_points() -> Vec<[u8; 32]> {
    [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ]
    .iter()
    .map(|h| hex(h))
    .collect()
}

/// Edge-case u values: small, around p, non-canonical, all ones, twist points.
fn edge_points() -> Vec<[u8; 32]> {
    let mut v = low_order_points();
    let p_minus = |d: u8| {
        let mut b = [0xffu8; 32];
        b[0] = 0xed - d;
        b[31] = 0x7f;
        b
    };
    v.push(p_minus(2)); // p - 2
    v.push(p_minus(20)); // p - 20
                         // Low-order u + p with bit 255 set: after RFC masking these are NOT low order.
    v.push(hex(
        "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    ));
    v.push(hex(
        "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    ));
    v.push(hex(
        "d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )); // p - 20 + 2^255
    v.push(hex(
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )); // 2^255 - 1
    v.push([0xff; 32]); // 2^256 - 1 (bit 255 masked)
    v.push(hex(
        "efffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )); // p + 2
    v.push(BASE);
    let mut two = [0u8; 32];
    two[0] = 2; // u = 2 is on the twist (2^3 + A 2^2 + 2 is a non-square)
    v.push(two);
    let mut three = [0u8; 32];
    three[0] = 3;
    v.push(three);
    let mut b = BASE;
    b[31] |= 0x80; // basepoint with bit 255 set
    v.push(b);
    v
}

fn edge_scalars() -> Vec<[u8; 32]> {
    let mut one = [0u8; 32];
    one[0] = 1;
    vec![
        [0u8; 32],
        [0xff; 32],
        one,
        hex("0800000000000000000000000000000000000000000000000000000000000080"),
    ]
}

#[test]
fn low_order_points_give_zero() {
    let mut rng = Rng(1);
    for u in low_order_points() {
        for _ in 0..4 {
            let k = rng.bytes();
            assert_eq!(dalek(&k, &u), [0u8; 32], "u={u:02x?}");
            assert_eq!(x25519(&k, &u), [0u8; 32]);
            for p in paths() {
                assert_eq!(x25519_on(p, &k, &u), [0u8; 32], "{p:?}");
            }
        }
    }
}

#[test]
fn edge_cases_match_dalek() {
    let mut rng = Rng(2);
    let mut scalars = edge_scalars();
    for _ in 0..3 {
        scalars.push(rng.bytes());
    }
    for u in edge_points() {
        for k in &scalars {
            let want = dalek(k, &u);
            assert_eq!(x25519(k, &u), want, "serial k={k:?} u={u:?}");
            for p in paths() {
                assert_eq!(x25519_on(p, k, &u), want, "{p:?} k={k:?} u={u:?}");
            }
        }
    }
}

#[test]
fn random_corpus_matches_dalek() {
    const N: usize = 2000;
    let mut rng = Rng(3);
    let scalars: Vec<[u8; 32]> = (0..N).map(|_| rng.bytes()).collect();
    let points: Vec<[u8; 32]> = (0..N).map(|_| rng.bytes()).collect();
    let want: Vec<[u8; 32]> = scalars
        .iter()
        .zip(&points)
        .map(|(k, u)| dalek(k, u))
        .collect();
    for i in 0..50 {
        assert_eq!(x25519(&scalars[i], &points[i]), want[i]);
    }
    for p in paths() {
        let mut out = vec![[0u8; 32]; N];
        // Uneven chunk sizes exercise full groups, partial groups and padding.
        let mut at = 0;
        for size in [1usize, 64, 5, 130, 8, 300].iter().cycle() {
            if at == N {
                break;
            }
            let end = (at + size).min(N);
            x25519_batch_with(p, &scalars[at..end], &points[at..end], &mut out[at..end]).unwrap();
            at = end;
        }
        for i in 0..N {
            assert_eq!(out[i], want[i], "{p:?} i={i}");
        }
    }
}

#[test]
fn batch_equals_serial_odd_counts_with_low_order_lanes() {
    let mut rng = Rng(4);
    let low = low_order_points();
    // 1-4 and leftovers of 1-4 (9, 12, 17, 65) take the 4-lane IFMA form.
    for n in [1usize, 2, 3, 4, 7, 9, 12, 17, 63, 64, 65] {
        let scalars: Vec<[u8; 32]> = (0..n).map(|_| rng.bytes()).collect();
        // Every fifth lane gets a low-order point: it must not spoil the
        // shared inversion for the others.
        let points: Vec<[u8; 32]> = (0..n)
            .map(|i| {
                if i % 5 == 2 {
                    low[i % low.len()]
                } else {
                    rng.bytes()
                }
            })
            .collect();
        let want: Vec<[u8; 32]> = scalars
            .iter()
            .zip(&points)
            .map(|(k, u)| x25519(k, u))
            .collect();
        for p in paths() {
            let mut out = vec![[0u8; 32]; n];
            x25519_batch_with(p, &scalars, &points, &mut out).unwrap();
            assert_eq!(out, want, "{p:?} n={n}");
            let mut out_raw = vec![[0u8; 32]; n];
            scalarmult_raw_batch_with(p, &scalars, &points, &mut out_raw).unwrap();
            for i in 0..n {
                assert_eq!(
                    out_raw[i],
                    scalarmult_raw(&scalars[i], &points[i]),
                    "{p:?} raw n={n} i={i}"
                );
            }
        }
        let mut out = vec![[0u8; 32]; n];
        x25519_batch(&scalars, &points, &mut out);
        assert_eq!(out, want, "default path n={n}");
        x25519_batch_same_scalar(&scalars[0], &points, &mut out);
        for i in 0..n {
            assert_eq!(
                out[i],
                x25519(&scalars[0], &points[i]),
                "same scalar n={n} i={i}"
            );
        }
    }
}

/// (clamp(c1) * clamp(c2)) mod 8l as 32 little-endian bytes. Both factors are
/// multiples of 8, so the product is 64 c1' c2' and mod 8l it is
/// 8 * ((8 c1' c2') mod l).
fn product_mod_8l(c1: &[u8; 32], c2: &[u8; 32]) -> [u8; 32] {
    let div8 = |c: &[u8; 32]| {
        let k = clamp(c);
        let mut out = [0u8; 32];
        for i in 0..32 {
            out[i] = (k[i] >> 3) | if i + 1 < 32 { k[i + 1] << 5 } else { 0 };
        }
        Scalar::from_bytes_mod_order(out)
    };
    let t = Scalar::from(8u64) * div8(c1) * div8(c2);
    let t = t.to_bytes(); // < l < 2^253, so 8 t < 2^256
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = (t[i] << 3) | if i > 0 { t[i - 1] >> 5 } else { 0 };
    }
    out
}

#[test]
fn raw_scalar_equals_chained_clamped_x25519() {
    let mut rng = Rng(5);
    let mut cases = Vec::new();
    for i in 0..40 {
        let p = if i % 4 == 0 {
            BASE
        } else {
            x25519(&rng.bytes(), &BASE)
        };
        let (c1, c2) = (rng.bytes(), rng.bytes());
        cases.push((p, c1, c2));
    }
    let points: Vec<[u8; 32]> = cases.iter().map(|c| c.0).collect();
    let ks: Vec<[u8; 32]> = cases.iter().map(|c| product_mod_8l(&c.1, &c.2)).collect();
    let want: Vec<[u8; 32]> = cases
        .iter()
        .map(|(p, c1, c2)| dalek(c2, &dalek(c1, p)))
        .collect();
    for i in 0..cases.len() {
        assert_eq!(scalarmult_raw(&ks[i], &points[i]), want[i], "serial i={i}");
    }
    for p in paths() {
        let mut out = vec![[0u8; 32]; cases.len()];
        scalarmult_raw_batch_with(p, &ks, &points, &mut out).unwrap();
        assert_eq!(out, want, "{p:?}");
    }
}

#[test]
fn raw_scalar_full_256_bits() {
    // Scalars with bit 255 (and 254) set: on an order-l point, [k]P = [k mod l]P,
    // which curve25519-dalek computes independently.
    let mut rng = Rng(6);
    let mut ks = Vec::new();
    let mut pts = Vec::new();
    let mut want = Vec::new();
    for i in 0..24 {
        let mut k = rng.bytes();
        k[31] |= if i % 2 == 0 { 0x80 } else { 0xc0 };
        if i == 0 {
            k = [0xff; 32];
        }
        let p = x25519(&rng.bytes(), &BASE);
        let w = (MontgomeryPoint(p) * Scalar::from_bytes_mod_order(k)).to_bytes();
        ks.push(k);
        pts.push(p);
        want.push(w);
    }
    for i in 0..ks.len() {
        assert_eq!(scalarmult_raw(&ks[i], &pts[i]), want[i], "serial i={i}");
    }
    for p in paths() {
        let mut out = vec![[0u8; 32]; ks.len()];
        scalarmult_raw_batch_with(p, &ks, &pts, &mut out).unwrap();
        assert_eq!(out, want, "{p:?}");
    }
}
