# Generates avx2_kernels.rs, the field kernels of the 4-lane AVX2 ladder:
#   python3 avx2_kernels.py > avx2_kernels.rs && rustfmt --edition 2021 avx2_kernels.rs
import sys

H = [f"ymm{i}" for i in range(10)]
FI, FI2, FI4, T0, T1, KR = "ymm10", "ymm11", "ymm12", "ymm13", "ymm14", "ymm15"
# `mul` without 19 g: 19 f_i and 38 f_i in the registers `square` uses for 4 f_i and constants.
FI19, FI38 = FI4, KR
TEMPS = [T0, T1]

M26, M25, A24 = (1 << 26) - 1, (1 << 25) - 1, 121665
TWO_P = [2 * ((1 << 26) - 19)] + [2 * (M26 if i % 2 == 0 else M25) for i in range(1, 10)]
# CONSTANTS, in u64 words: the limb masks (broadcast from words 0 and 1), then 32-byte splats
# (memory operands): 19 at byte 32, A24 at 64, limb i of 2p at 96 + 32 i.
KMASK, K19, KA24, K2P = 0, 32, 64, 96
CONSTANTS = [M26, M25, 0, 0] + [19] * 4 + [A24] * 4 + [w for x in TWO_P for w in [x] * 4]

# The ladder step's values (`Step`, one ladder's), in field order; each is ten limbs.
STEP_FIELDS = ["a", "b", "c", "d", "p", "q", "da", "aa", "sum", "dif", "bb", "e", "u", "t",
               "x2", "z2", "x3", "z3", "x1", "x1_19", "sq19", "sq38"]
def field(name):
    return ("w", 320 * STEP_FIELDS.index(name))
S_OFFSET = 320 * len(STEP_FIELDS)

def ref(base, i):
    return f"ymmword ptr [{{{base[0]}}} + {base[1] + 32 * i}]"

def carry(lines):
    lines.append("// carry: two chains (0..4, 4..9), the wrap 9 -> 0 times 19, then 0 -> 1")
    lines.append(f"vpbroadcastq {KR}, qword ptr [{{k}} + {KMASK}]")
    lines.append(f"vpbroadcastq {T1}, qword ptr [{{k}} + {KMASK + 8}]")
    for i in [0, 4, 1, 5, 2, 6, 3, 7, 4, 8, 9, 0]:
        r = 26 if i % 2 == 0 else 25
        m = KR if i % 2 == 0 else T1
        lines.append(f"vpsrlq {T0}, {H[i]}, {r}")
        lines.append(f"vpand {H[i]}, {H[i]}, {m}")
        if i == 9:
            # 19 c = 16 c + 2 c + c (c < 2^38: no 32-bit multiply)
            lines.append(f"vpaddq {H[0]}, {H[0]}, {T0}")
            lines.append(f"vpaddq {T0}, {T0}, {T0}")
            lines.append(f"vpaddq {H[0]}, {H[0]}, {T0}")
            lines.append(f"vpsllq {T0}, {T0}, 3")
            lines.append(f"vpaddq {H[0]}, {H[0]}, {T0}")
        else:
            lines.append(f"vpaddq {H[i + 1]}, {H[i + 1]}, {T0}")

def product(lines, init, t, k, left, src):
    # Column k += left * src: the first product of a column lands in its register directly,
    # the others through the two temporaries in turn. Returns the next temporary's index.
    if not init[k]:
        lines.append(f"vpmuludq {H[k]}, {left}, {src}")
        init[k] = True
        return t
    tmp = TEMPS[t % 2]
    lines.append(f"vpmuludq {tmp}, {left}, {src}")
    lines.append(f"vpaddq {H[k]}, {H[k]}, {tmp}")
    return t + 1

def store(lines, dst):
    for i in range(10):
        lines.append(f"vmovdqu {ref(dst, i)}, {H[i]}")

def mul(f, g, g19=None):
    # f * g into H, carried. g19: 19 g in memory (limbs 1..10), as for the ladder's fixed x1.
    # Otherwise row i takes 19 f_i (and 38 f_i) into registers: as many multiplies, no stores.
    lines = []
    init = [False] * 10
    t = 0
    for i in range(10):
        lines.append(f"// row {i}: f{i} against g" + (" (g19 past column 9)" if g19 else " (19 f_i past column 9)"))
        lines.append(f"vmovdqu {FI}, {ref(f, i)}")
        if i % 2 == 1:
            lines.append(f"vpaddq {FI2}, {FI}, {FI}")
        if not g19 and i > 0:
            lines.append(f"vpmuludq {FI19}, {FI}, ymmword ptr [{{k}} + {K19}]")
            if i % 2 == 1:
                lines.append(f"vpaddq {FI38}, {FI19}, {FI19}")
        for j in range(10):
            both_odd = i % 2 == 1 and j % 2 == 1
            if i + j < 10:
                left = FI2 if both_odd else FI
                src = ref(g, j)
            elif g19:
                left = FI2 if both_odd else FI
                src = ref(g19, j)
            else:
                left = FI38 if both_odd else FI19
                src = ref(g, j)
            t = product(lines, init, t, (i + j) % 10, left, src)
    carry(lines)
    return lines

def square(f, x19, x38):
    # f^2 into H, carried; x19 and x38 are scratch for 19 f_j and 38 f_j of the high limbs.
    lines = []
    lines.append("// 19 f_j for j >= 5, 38 f_j for odd j >= 5, into the scratch")
    lines.append(f"vpbroadcastq {KR}, qword ptr [{{k}} + {K19}]")
    for j in range(5, 10):
        lines.append(f"vpmuludq {T0}, {KR}, {ref(f, j)}")
        lines.append(f"vmovdqu {ref(x19, j)}, {T0}")
        if j % 2 == 1:
            lines.append(f"vpaddq {T0}, {T0}, {T0}")
            lines.append(f"vmovdqu {ref(x38, j)}, {T0}")
    init = [False] * 10
    t = 0
    for i in range(10):
        lines.append(f"// row {i}: f{i} against f{i}..f9")
        lines.append(f"vmovdqu {FI}, {ref(f, i)}")
        if i < 9:
            lines.append(f"vpaddq {FI2}, {FI}, {FI}")
        need4 = any(i != j and i % 2 == 1 and j % 2 == 1 and i + j < 10 for j in range(i, 10))
        if need4:
            lines.append(f"vpaddq {FI4}, {FI2}, {FI2}")
        for j in range(i, 10):
            both_odd = i % 2 == 1 and j % 2 == 1
            wrap = i + j >= 10
            a, b = i != j, both_odd and not wrap
            left = {(False, False): FI, (True, False): FI2, (False, True): FI2, (True, True): FI4}[(a, b)]
            if not wrap:
                src = FI if j == i else ref(f, j)
            elif not both_odd:
                src = ref(x19, j)
            else:
                src = ref(x38, j)
            t = product(lines, init, t, (i + j) % 10, left, src)
    carry(lines)
    return lines

def times19():
    lines = [f"vpbroadcastq {KR}, qword ptr [{{k}} + {K19}]"]
    for j in range(1, 10):
        tmp = TEMPS[j % 2]
        lines.append(f"vpmuludq {tmp}, {KR}, {ref(('g', 0), j)}")
        lines.append(f"vmovdqu {ref(('dst', 0), j)}, {tmp}")
    return lines

def two_p(i):
    return f"ymmword ptr [{{k}} + {K2P + 32 * i}]"

# Epilogues of the ladder step's kernels: the additions, subtractions and selects that the
# step needs next, done while the result is still in H (they overlap the carry chain's tail).

def sum_dif(lines, other, s, d):
    # s = other + h, d = other + 2p - h.
    lines.append("// sum and difference with a value in memory")
    for i in range(10):
        lines.append(f"vmovdqu ymm10, {ref(other, i)}")
        lines.append(f"vpaddq ymm11, ymm10, {H[i]}")
        lines.append(f"vmovdqu {ref(s, i)}, ymm11")
        lines.append(f"vpaddq ymm12, ymm10, {two_p(i)}")
        lines.append(f"vpsubq ymm12, ymm12, {H[i]}")
        lines.append(f"vmovdqu {ref(d, i)}, ymm12")

def dif_a24(lines, aa, e, u):
    # e = aa + 2p - h, then u = aa + A24 e into H, carried.
    lines.append("// e = aa - bb, u = aa + A24 e")
    for i in range(10):
        lines.append(f"vmovdqu ymm10, {ref(aa, i)}")
        lines.append(f"vpaddq ymm11, ymm10, {two_p(i)}")
        lines.append(f"vpsubq ymm11, ymm11, {H[i]}")
        lines.append(f"vmovdqu {ref(e, i)}, ymm11")
        lines.append(f"vpmuludq ymm12, ymm11, ymmword ptr [{{k}} + {KA24}]")
        lines.append(f"vpaddq {H[i]}, ymm10, ymm12")
    carry(lines)

def next_inputs(lines, z3, a, b, c, d, p, q):
    # H = x3: c = x3 + z3, d = x3 + 2p - z3, then the next step's doubling input
    # (p, q) = s ? (c, d) : (a, b), with a and b from memory.
    lines.append("// the next step's c = x3 + z3, d = x3 - z3, and (p, q) = s ? (c, d) : (a, b)")
    lines.append(f"vmovdqu ymm15, ymmword ptr [{{w}} + {S_OFFSET}]")
    for i in range(10):
        lines.append(f"vmovdqu ymm10, {ref(z3, i)}")
        lines.append(f"vpaddq ymm11, {H[i]}, ymm10")
        lines.append(f"vmovdqu {ref(c, i)}, ymm11")
        lines.append(f"vpaddq ymm12, {H[i]}, {two_p(i)}")
        lines.append(f"vpsubq ymm12, ymm12, ymm10")
        lines.append(f"vmovdqu {ref(d, i)}, ymm12")
        lines.append(f"vmovdqu ymm13, {ref(a, i)}")
        lines.append(f"vpblendvb ymm13, ymm13, ymm11, ymm15")
        lines.append(f"vmovdqu {ref(p, i)}, ymm13")
        lines.append(f"vmovdqu ymm14, {ref(b, i)}")
        lines.append(f"vpblendvb ymm14, ymm14, ymm12, ymm15")
        lines.append(f"vmovdqu {ref(q, i)}, ymm14")

F = field
def step_kernels():
    # (name, doc, lines) of the nine kernels of a ladder step, in the order `ladder` runs them.
    ks = []
    l = mul(F("d"), F("a")); store(l, F("da"))
    ks.append(("step_da", "da = d a", l))
    l = square(F("p"), F("sq19"), F("sq38")); store(l, F("aa"))
    ks.append(("step_aa", "aa = p^2", l))
    l = mul(F("c"), F("b")); sum_dif(l, F("da"), F("sum"), F("dif"))
    ks.append(("step_cb", "cb = c b, then sum = da + cb, dif = da - cb (cb itself is not kept)", l))
    l = square(F("q"), F("sq19"), F("sq38")); store(l, F("bb")); dif_a24(l, F("aa"), F("e"), F("u")); store(l, F("u"))
    ks.append(("step_bb", "bb = q^2, then e = aa - bb, u = aa + A24 e", l))
    l = square(F("dif"), F("sq19"), F("sq38")); store(l, F("t"))
    ks.append(("step_t", "t = dif^2", l))
    l = mul(F("aa"), F("bb")); store(l, F("x2"))
    ks.append(("step_x2", "x2 = aa bb (the doubling's X)", l))
    l = mul(F("t"), F("x1"), F("x1_19")); store(l, F("z3"))
    ks.append(("step_z3", "z3 = t x1 (the sum's Z), with 19 x1 precomputed", l))
    l = mul(F("e"), F("u")); store(l, F("z2")); sum_dif(l, F("x2"), F("a"), F("b"))
    ks.append(("step_z2", "z2 = e u (the doubling's Z), then the next a = x2 + z2, b = x2 - z2", l))
    l = square(F("sum"), F("sq19"), F("sq38")); store(l, F("x3"))
    next_inputs(l, F("z3"), F("a"), F("b"), F("c"), F("d"), F("p"), F("q"))
    ks.append(("step_x3", "x3 = sum^2 (the sum's X), then the next step's c = x3 + z3, d = x3 - z3, (p, q)", l))
    return ks

def emit(lines, indent):
    out = []
    for l in lines:
        if l.startswith("//"):
            out.append(f"{indent}{l}")
        else:
            out.append(f'{indent}"{l}",')
    return "\n".join(out)

CLOBBER_ALL = "\n".join(f'            out("ymm{i}") _,' for i in range(16))
CLOBBER_T = "\n".join(f'            out("ymm{i}") _,' for i in (13, 14, 15))

def step_fn(name, doc, lines):
    return f'''/// Ladder step kernel:
/// {doc}.
#[inline(never)]
#[target_feature(enable = "avx2")]
pub(super) fn {name}(w: &mut Step) {{{{
    // SAFETY: reads and writes only fields of `*w` (a unique borrow; offsets from its
    // `repr(C)` layout, checked at compile time below) and reads CONSTANTS; AVX2 is enabled
    // on this function; only the declared registers change.
    unsafe {{{{
        asm!(
{emit(lines, "            ")}
            w = in(reg) core::ptr::from_mut(w),
            k = in(reg) CONSTANTS.0.as_ptr(),
{CLOBBER_ALL}
            options(nostack, preserves_flags),
        );
    }}}}
}}}}
'''

STEP_STRUCT = "\n".join(f"    pub {n}: Limbs," for n in STEP_FIELDS)
OFFSET_CHECKS = "\n".join(
    f"    assert!(core::mem::offset_of!(Step, {n}) == {320 * i});" for i, n in enumerate(STEP_FIELDS))
STEP_FNS = "\n".join(step_fn(n, d, l) for n, d, l in step_kernels())
CONST_WORDS = ", ".join(str(x) for x in CONSTANTS)

src = f'''//! The field kernels of the 4-lane AVX2 ladder ([`super::avx2`]) in assembly, scheduled by
//! hand: generated by `avx2_kernels.py` (next to this file; edit that, not this, and run
//! it as its first lines say).
//!
//! Why assembly: written with intrinsics, LLVM interleaves the hundred products of a
//! multiplication column by column and spills the accumulators, and turns each multiply
//! by 19 (a `vpmuludq` whose product only feeds another `vpmuludq`) into an emulated
//! 64-bit multiply of five instructions. Here every kernel keeps the ten column sums in
//! ymm0-ymm9 and works row by row: row i holds f_i (ymm10) and its multiples (2 f_i in
//! ymm11; 4 f_i in ymm12 for a square; 19 f_i and 38 f_i in ymm12 and ymm15 for the
//! columns a product wraps past limb 9) against the other operand's limbs, read straight
//! from memory as the second operand of `vpmuludq`; the products go through two
//! temporaries (ymm13, ymm14). The carry chain follows in the same registers (ymm14 and
//! ymm15 then hold the limb masks) and the ten limbs are stored once. Radix 2^25.5 and the
//! bounds are those of `avx2.rs`: limbs < 3 * radix keep 19 f_i and 38 f_i below the 2^32
//! that `vpmuludq` reads.
//!
//! The ladder step runs as nine kernels (`step_*`) on one ladder's [`Step`]: each ends with
//! the additions, subtractions and selects its result feeds, done while the result is still
//! in registers, so the step has no separate passes over memory for them and they overlap
//! the carry chain's serial tail. The generic kernels ([`mul`], [`square`], ...) serve the
//! inversion and the last doublings.
//!
//! Constant time: straight-line code, no branch or address depends on any value.

use core::arch::asm;
use core::arch::x86_64::__m256i;
use core::mem::MaybeUninit;

/// Ten limbs of four lanes (the layout of `avx2::F4`).
pub(super) type Limbs = [__m256i; 10];

/// Constants the kernels read: the limb masks 2^26 - 1 and 2^25 - 1 (broadcast from words 0
/// and 1), then 32-byte splats read as memory operands: 19 (byte {K19}), A24 (byte {KA24}) and
/// the ten limbs of 2p (byte {K2P} + 32 i); aligned so no splat straddles a cache line.
#[repr(C, align(64))]
struct Constants([u64; {len(CONSTANTS)}]);

static CONSTANTS: Constants = Constants([{CONST_WORDS}]);

/// One ladder's values for the `step_*` kernels, which address the fields by fixed offsets.
/// Inputs of a step: a = x2 + z2, b = x2 - z2, c = x3 + z3, d = x3 - z3, (p, q) the
/// doubling's input selected by `s`, x1 and 19 x1 (`x1_19`, limbs 1..10); `sq19`/`sq38`
/// are the squares' scratch. Limbs < 3 * radix wherever a kernel reads them.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Step {{
{STEP_STRUCT}
    /// The next step's select mask (all ones per lane: take (c, d)).
    pub s: __m256i,
}}

const _: () = {{
{OFFSET_CHECKS}
    assert!(core::mem::offset_of!(Step, s) == {S_OFFSET});
}};

/// `out[j] = 19 g[j]` for j in 1..10 (limb 0 is neither needed nor written: only
/// [`step_z3`] reads it, and only limbs 1..10); limbs < 3 * radix, so each
/// product fits the 32 bits the next `vpmuludq` reads.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn times19(g: &Limbs, out: &mut Limbs) {{
    // SAFETY: reads 320 bytes at `g` and CONSTANTS, writes 320 bytes at `out` (a unique
    // borrow); AVX2 is enabled on this function; only the declared registers change.
    unsafe {{
        asm!(
{emit(times19(), "            ")}
            g = in(reg) g.as_ptr(),
            dst = in(reg) out.as_mut_ptr(),
            k = in(reg) CONSTANTS.0.as_ptr(),
{CLOBBER_T}
            options(nostack, preserves_flags),
        );
    }}
}}

/// `out = f * g` reduced (every limb written); limbs < 3 * radix.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn mul(f: &Limbs, g: &Limbs, out: &mut Limbs) {{
    // SAFETY: reads 320 bytes at each of `f` and `g` and CONSTANTS, writes 320 bytes at `out`
    // (a unique borrow); AVX2 is enabled on this function; only the declared registers
    // change.
    unsafe {{
        asm!(
{emit(mul(("f", 0), ("g", 0)) + (lambda l: (store(l, ("dst", 0)), l)[1])([]), "            ")}
            f = in(reg) f.as_ptr(),
            g = in(reg) g.as_ptr(),
            dst = in(reg) out.as_mut_ptr(),
            k = in(reg) CONSTANTS.0.as_ptr(),
{CLOBBER_ALL}
            options(nostack, preserves_flags),
        );
    }}
}}

/// `out = f^2` reduced (every limb written); `scratch` receives 19 f_j and 38 f_j of the
/// high limbs. Limbs < 3 * radix.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn square(f: &Limbs, scratch: &mut MaybeUninit<[Limbs; 2]>, out: &mut Limbs) {{
    let x19 = scratch.as_mut_ptr().cast::<Limbs>();
    // In bounds: the second of the two arrays.
    let x38 = x19.wrapping_add(1);
    // SAFETY: reads 320 bytes at `f` and CONSTANTS, writes and reads back limbs 5..10 of
    // `x19` and `x38`, writes 320 bytes at `out` (unique borrows); AVX2 is enabled on this
    // function; only the declared registers change.
    unsafe {{
        asm!(
{emit(square(("f", 0), ("x19", 0), ("x38", 0)) + (lambda l: (store(l, ("dst", 0)), l)[1])([]), "            ")}
            f = in(reg) f.as_ptr(),
            x19 = in(reg) x19,
            x38 = in(reg) x38,
            dst = in(reg) out.as_mut_ptr(),
            k = in(reg) CONSTANTS.0.as_ptr(),
{CLOBBER_ALL}
            options(nostack, preserves_flags),
        );
    }}
}}

{STEP_FNS}'''
sys.stdout.write(src)
