//! The CPU's vector features, detected once, and the one way code is built for them.
//!
//! Two kinds of fast code use this: loops written for the compiler to vectorize, compiled a
//! second time for AVX2 + FMA + F16C by [`simd_dispatch!`] (convert's quantizer, the engine's
//! portable kernels); and the engine's explicit AVX2 / AVX-512 kernels, one of which each
//! weight matrix is given when the model loads (`engine::kernels::Kernels`).

use std::sync::OnceLock;

/// What this CPU can run, as far as this crate's kernels care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cpu {
    /// AVX2, FMA and F16C: the second build of the portable loops, the AVX2 kernels.
    pub avx2: bool,
    /// AVX-512 F: the float prompt GEMM.
    pub avx512: bool,
    /// AVX-512 F, BW, VL and VNNI: the 4-bit decode kernel, the quantized prompt GEMM.
    pub vnni: bool,
    /// VNNI plus AVX-512 VBMI: the any-width (2/3/5/6/8-bit) kernels.
    pub vbmi: bool,
}

impl Cpu {
    #[cfg(target_arch = "x86_64")]
    fn detect() -> Cpu {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        let avx512 = avx2 && has!("avx512f");
        let vnni = avx512 && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
        Cpu {
            avx2,
            avx512,
            vnni,
            vbmi: vnni && has!("avx512vbmi"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Cpu {
        Cpu::default()
    }
}

/// This CPU's features (detected on first use).
pub fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    *CPU.get_or_init(Cpu::detect)
}

/// Defines `fn $name(...)` whose body is compiled twice — as written, and with AVX2 + FMA +
/// F16C enabled — and runs the second build when [`cpu`] has them. The two builds compute the
/// same IEEE operations (Rust never contracts `a * b + c` into an FMA), only the instruction
/// selection differs.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $crate::simd::simd_dispatch!(@builds false; $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? $body);
    };
    // The builds; `$avx512`: a third one for AVX-512 F, run first where the CPU has it (when
    // false, the optimizer drops it).
    (@builds $avx512:literal; $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU must have AVX-512 F, AVX2, FMA and F16C (`crate::simd::cpu().avx512`).
                #[target_feature(enable = "avx512f,avx2,fma,f16c")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                /// # Safety
                /// The CPU must have AVX2, FMA and F16C (`crate::simd::cpu().avx2`).
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                let cpu = $crate::simd::cpu();
                if $avx512 && cpu.avx512 {
                    // SAFETY: the CPU has every feature `wide` is compiled for (checked above).
                    return unsafe { wide($($arg),*) };
                }
                if cpu.avx2 {
                    // SAFETY: the CPU has every feature `fast` is compiled for (checked above).
                    return unsafe { fast($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// [`simd_dispatch!`] with a third build, for AVX-512 F (sixteen lanes and 32 registers), run
/// first where [`cpu`] has it: for loops whose working set of accumulators is larger than
/// AVX2's 16 registers or that gain from the wider lanes (attention). The same IEEE
/// operations in every build.
macro_rules! simd_dispatch_avx512 {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $crate::simd::simd_dispatch!(@builds true; $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? $body);
    };
}
pub(crate) use simd_dispatch_avx512;
