//! Device and precision selection.
//!
//! One binary serves CPU-only and CUDA machines: `tch` links `libtorch_cpu` directly, but the CUDA
//! kernels live in `libtorch_cuda.so`, which the linker drops when nothing references it. We
//! `dlopen` it at start-up (ignoring failure on CPU-only installs) so `tch::Cuda::is_available()`
//! sees the GPU when there is one.

use std::fmt;
use std::str::FromStr;
use std::sync::Once;

use tch::{Device, Kind};

static INIT: Once = Once::new();

/// Loads `libtorch_cuda.so` into the process if it can be found. Idempotent and cheap; call it
/// before the first CUDA query. Failure is ignored on purpose: a CPU-only libtorch has no such
/// library and that is fine.
pub fn init() {
    INIT.call_once(|| {
        for name in [c"libtorch_cuda.so", c"libtorch_cuda_cpp.so"] {
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is deliberately leaked
            // so the library stays loaded for the life of the process.
            unsafe {
                libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            }
        }
    });
}

/// Sets the number of intra-op CPU threads libtorch uses. Benchmarks and tests pin this so numbers
/// are comparable on shared machines.
pub fn set_threads(n: usize) {
    tch::set_num_threads(n as i32);
}

/// Where the model runs, as a user writes it: `cpu`, `cuda`, `cuda:1`, or `auto` (CUDA when
/// available).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    #[default]
    Auto,
}

impl DeviceSpec {
    /// Resolves to a concrete `tch::Device`, loading the CUDA library first. Asking for CUDA on a
    /// machine without it is an error rather than a silent CPU fallback.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        init();
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if i < n {
                    Ok(Device::Cuda(i))
                } else {
                    Err(DeviceError::CudaUnavailable { index: i, count: n })
                }
            }
            DeviceSpec::Auto => Ok(if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(DeviceError::Parse(format!(
                    "unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// Precision of weights and activations. Norms, softmax and RoPE tables are computed in f32 inside
/// the layers either way, as HF does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    #[default]
    F32,
    Bf16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
        }
    }
}

impl FromStr for DType {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            _ => Err(DeviceError::Parse(format!(
                "unknown dtype `{s}` (expected f32 or bf16)"
            ))),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}")]
    Parse(String),
    #[error("CUDA device {index} requested but {count} CUDA device(s) are visible")]
    CudaUnavailable { index: usize, count: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bf16".parse::<DType>().unwrap().kind(), Kind::BFloat16);
        assert!("f16".parse::<DType>().is_err());
    }

    #[test]
    fn auto_resolves_and_cpu_is_always_there() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        let auto = DeviceSpec::Auto.resolve().unwrap();
        assert_eq!(auto.is_cuda(), tch::Cuda::is_available());
    }
}
