//! Device and precision selection, and why CUDA is or is not usable.
//!
//! One binary serves CPU-only and CUDA machines: `tch` links `libtorch_cpu` directly, but the CUDA
//! kernels live in `libtorch_cuda.so`, which the linker drops when nothing references it. [`init`]
//! `dlopen`s it before anything queries CUDA (libtorch caches its first answer), keeping the loader's
//! error text. When libtorch then sees no device, [`cuda_status`] asks the driver directly
//! (`libcuda.so.1`: its CUDA version, `cuInit`, the device count) so the error says which of the
//! four usual causes it is: libtorch's CUDA libraries missing, no driver, a driver too old for this
//! libtorch's CUDA, or no device visible. `docs/gpu.md` maps each to its fix.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use tch::{Device, Kind};

/// The `dlopen` result of libtorch's CUDA library, recorded once per process.
static TORCH_CUDA: OnceLock<Result<(), String>> = OnceLock::new();
static STATUS: OnceLock<CudaStatus> = OnceLock::new();

/// Loads `libtorch_cuda.so` into the process if it can be found and records why not otherwise.
/// Idempotent and cheap after the first call; `main` calls it first thing, and every CUDA query in
/// this crate goes through it.
pub fn init() {
    TORCH_CUDA.get_or_init(|| {
        let mut errors = Vec::new();
        for name in [c"libtorch_cuda.so", c"libtorch_cuda_cpp.so"] {
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is deliberately leaked so
            // the library stays loaded for the life of the process.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return Ok(());
            }
            errors.push(last_dl_error());
        }
        Err(errors.remove(0))
    });
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the loader, valid until the
    // next dl* call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".to_string()
    } else {
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// What the process found about CUDA: usable with `devices` devices, or not and why. `gpus_present`
/// says whether this machine has NVIDIA GPUs at all (device files or a driver that counts some), so
/// `auto` can warn when it falls back to the CPU on a GPU machine and stay quiet on a CPU one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaStatus {
    pub devices: usize,
    pub problem: Option<CudaProblem>,
    pub gpus_present: bool,
}

/// The facts [`CudaStatus`] is decided from; gathered by [`probe`], decided by [`diagnose`] (a pure
/// function, so every message is unit-tested on machines without a GPU).
#[derive(Debug, Clone)]
pub struct CudaProbe {
    /// `dlopen("libtorch_cuda.so")`: `Err` holds the loader's text.
    pub torch_cuda: Result<(), String>,
    /// `cudaRuntimeGetVersion` of the runtime libtorch links, e.g. 13000 for CUDA 13.0.
    pub runtime_version: Option<i32>,
    /// `libcuda.so.1` (the driver): `Err` holds the loader's text.
    pub driver: Result<DriverFacts, String>,
    /// `/dev/nvidia0`, `/dev/nvidia1`, … on this machine.
    pub gpu_device_files: usize,
    /// What libtorch reports (`tch::Cuda::device_count`).
    pub torch_devices: usize,
}

#[derive(Debug, Clone, Default)]
pub struct DriverFacts {
    /// `cuDriverGetVersion`: the newest CUDA the driver supports, e.g. 12040 for 12.4.
    pub cuda_version: Option<i32>,
    /// The driver release from `/proc/driver/nvidia/version`, e.g. `550.54.15`.
    pub release: Option<String>,
    /// `cuInit(0)`'s result (0 = success, 100 = no device).
    pub init: Option<i32>,
    /// `cuDeviceGetCount` after a successful `cuInit`.
    pub devices: Option<i32>,
}

/// Why CUDA cannot be used, in the words a user needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaProblem {
    #[error(
        "libtorch's CUDA library could not be loaded: {0}. Either LIBTORCH is a CPU-only build, or the CUDA \
         libraries it links are not installed: run `scripts/setup.sh --cuda` (then `scripts/check-cuda-libs.sh` \
         names anything still missing), or build against an installed PyTorch with LIBTORCH_USE_PYTORCH=1 \
         (docs/gpu.md)"
    )]
    TorchCudaNotLoaded(String),
    #[error("no NVIDIA driver: libcuda.so.1 could not be loaded ({0}); install the driver (docs/gpu.md)")]
    NoDriver(String),
    #[error(
        "the NVIDIA driver{} supports CUDA up to {}, but this libtorch is a CUDA {} build and needs a driver \
         for CUDA {}.0 or newer{}; upgrade the driver, or use a libtorch built for an older CUDA (docs/gpu.md)",
        release.as_deref().map(|r| format!(" {r}")).unwrap_or_default(), cuda_version_str(*driver),
        cuda_version_str(*runtime), runtime / 1000, if *runtime >= 13000 { " (driver R580+)" } else { "" }
    )]
    DriverTooOld {
        driver: i32,
        runtime: i32,
        release: Option<String>,
    },
    #[error(
        "the NVIDIA driver is loaded but sees no CUDA device (cuInit: {}){}",
        cu_error_name(*init), visible_devices_hint()
    )]
    NoDevice { init: i32 },
    #[error("the NVIDIA driver failed to initialise (cuInit: {}){}", cu_error_name(*init), visible_devices_hint())]
    InitFailed { init: i32 },
    #[error(
        "the driver reports {driver_devices} CUDA device(s) but libtorch sees none; check that LIBTORCH's \
         CUDA version matches the driver (`scripts/check-cuda-libs.sh`, docs/gpu.md)"
    )]
    TorchSeesNone { driver_devices: i32 },
}

/// A CUDA version as the runtime and driver report it (`13020`) in the form users read (`13.2`).
pub fn cuda_version_str(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn cu_error_name(code: i32) -> String {
    let name = match code {
        0 => "CUDA_SUCCESS",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        999 => "CUDA_ERROR_UNKNOWN",
        803 => "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        804 => "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
        _ => return format!("CUDA error {code}"),
    };
    format!("{name} ({code})")
}

fn visible_devices_hint() -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!("; CUDA_VISIBLE_DEVICES is `{v}`"),
        Err(_) => String::new(),
    }
}

/// Decides usability from the facts. libtorch's own count wins when it sees devices; otherwise the
/// first cause in the order a user meets them: libtorch's CUDA half, the driver, its version, the
/// devices.
pub fn diagnose(p: &CudaProbe) -> CudaStatus {
    let driver_devices = p.driver.as_ref().ok().and_then(|d| d.devices).unwrap_or(0);
    let gpus_present = p.gpu_device_files > 0 || driver_devices > 0;
    let unusable = |problem| CudaStatus {
        devices: 0,
        problem: Some(problem),
        gpus_present,
    };
    if p.torch_devices > 0 {
        return CudaStatus {
            devices: p.torch_devices,
            problem: None,
            gpus_present: true,
        };
    }
    if let Err(e) = &p.torch_cuda {
        return unusable(CudaProblem::TorchCudaNotLoaded(e.clone()));
    }
    let d = match &p.driver {
        Err(e) => return unusable(CudaProblem::NoDriver(e.clone())),
        Ok(d) => d,
    };
    if let (Some(driver), Some(runtime)) = (d.cuda_version, p.runtime_version)
        && driver / 1000 < runtime / 1000
    {
        return unusable(CudaProblem::DriverTooOld {
            driver,
            runtime,
            release: d.release.clone(),
        });
    }
    match d.init {
        Some(100) => unusable(CudaProblem::NoDevice { init: 100 }),
        Some(code) if code != 0 => unusable(CudaProblem::InitFailed { init: code }),
        _ if driver_devices == 0 => unusable(CudaProblem::NoDevice {
            init: d.init.unwrap_or(0),
        }),
        _ => unusable(CudaProblem::TorchSeesNone { driver_devices }),
    }
}

/// Gathers the facts on this machine. Asks the driver only when libtorch sees no device.
pub fn probe() -> CudaProbe {
    init();
    let torch_cuda = TORCH_CUDA.get().cloned().unwrap_or_else(|| Err("not attempted".into()));
    let torch_devices = if torch_cuda.is_ok() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let gpu_device_files = std::fs::read_dir("/dev")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("nvidia")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    let mut p = CudaProbe {
        torch_cuda,
        runtime_version: None,
        driver: Err(String::new()),
        gpu_device_files,
        torch_devices,
    };
    if torch_devices > 0 {
        p.driver = Ok(DriverFacts::default());
        return p;
    }
    // SAFETY: symbol lookups in the process's global namespace; called only with the signature the
    // CUDA runtime documents (`cudaError_t cudaRuntimeGetVersion(int*)`).
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaRuntimeGetVersion".as_ptr());
        if !sym.is_null() {
            let f: extern "C" fn(*mut c_int) -> c_int = std::mem::transmute(sym);
            let mut v = 0;
            if f(&mut v) == 0 {
                p.runtime_version = Some(v);
            }
        }
    }
    p.driver = driver_facts();
    p
}

fn driver_facts() -> Result<DriverFacts, String> {
    // SAFETY: dlopen/dlsym with valid names; the driver's entry points are called with the
    // signatures of its documented C API (CUresult is an int); the handle is leaked on purpose.
    unsafe {
        let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if h.is_null() {
            return Err(last_dl_error());
        }
        let sym = |name: &CStr| -> *mut c_void { libc::dlsym(h, name.as_ptr() as *const c_char) };
        let mut facts = DriverFacts {
            release: std::fs::read_to_string("/proc/driver/nvidia/version")
                .ok()
                .and_then(|s| parse_release(&s)),
            ..DriverFacts::default()
        };
        let get_version = sym(c"cuDriverGetVersion");
        if !get_version.is_null() {
            let f: extern "C" fn(*mut c_int) -> c_int = std::mem::transmute(get_version);
            let mut v = 0;
            if f(&mut v) == 0 {
                facts.cuda_version = Some(v);
            }
        }
        let cu_init = sym(c"cuInit");
        if !cu_init.is_null() {
            let f: extern "C" fn(c_uint) -> c_int = std::mem::transmute(cu_init);
            let code = f(0);
            facts.init = Some(code);
            let count = sym(c"cuDeviceGetCount");
            if code == 0 && !count.is_null() {
                let f: extern "C" fn(*mut c_int) -> c_int = std::mem::transmute(count);
                let mut n = 0;
                if f(&mut n) == 0 {
                    facts.devices = Some(n);
                }
            }
        }
        Ok(facts)
    }
}

/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 …` → `550.54.15`.
fn parse_release(s: &str) -> Option<String> {
    let line = s.lines().find(|l| l.contains("Kernel Module"))?;
    let after = line.split("Kernel Module").nth(1)?;
    after.split_whitespace().next().map(str::to_string)
}

/// This process's CUDA status, probed once.
pub fn cuda_status() -> &'static CudaStatus {
    STATUS.get_or_init(|| diagnose(&probe()))
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
    /// Resolves to a concrete `tch::Device`. Asking for CUDA where it cannot be used is an error that
    /// says why; `auto` takes the CPU then, with a warning when the machine has GPUs.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                let status = cuda_status();
                if let Some(problem) = &status.problem {
                    return Err(DeviceError::Cuda(problem.clone()));
                }
                if i < status.devices {
                    Ok(Device::Cuda(i))
                } else {
                    Err(DeviceError::CudaUnavailable {
                        index: i,
                        count: status.devices,
                    })
                }
            }
            DeviceSpec::Auto => {
                let status = cuda_status();
                match &status.problem {
                    None if status.devices > 0 => Ok(Device::Cuda(0)),
                    Some(problem) if status.gpus_present => {
                        warn_once(problem);
                        Ok(Device::Cpu)
                    }
                    _ => Ok(Device::Cpu),
                }
            }
        }
    }
}

fn warn_once(problem: &CudaProblem) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| tracing::warn!("device auto: running on the CPU although this machine has GPUs: {problem}"));
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
    #[error("CUDA requested but not usable: {0}")]
    Cuda(CudaProblem),
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

    fn gpu_box(driver: DriverFacts) -> CudaProbe {
        CudaProbe {
            torch_cuda: Ok(()),
            runtime_version: Some(13000),
            driver: Ok(driver),
            gpu_device_files: 1,
            torch_devices: 0,
        }
    }

    #[test]
    fn diagnose_names_each_cause() {
        let ok = DriverFacts {
            cuda_version: Some(13000),
            release: None,
            init: Some(0),
            devices: Some(1),
        };
        let mut p = gpu_box(ok.clone());
        p.torch_devices = 2;
        assert_eq!(
            diagnose(&p),
            CudaStatus {
                devices: 2,
                problem: None,
                gpus_present: true
            }
        );

        // A CPU-only machine: nothing to warn about, and the loader's text is kept.
        let cpu = CudaProbe {
            torch_cuda: Err("libtorch_cuda.so: cannot open shared object file".into()),
            runtime_version: None,
            driver: Err("libcuda.so.1: cannot open shared object file".into()),
            gpu_device_files: 0,
            torch_devices: 0,
        };
        let s = diagnose(&cpu);
        assert!(!s.gpus_present);
        let msg = s.problem.unwrap().to_string();
        assert!(
            msg.contains("cannot open shared object file") && msg.contains("setup.sh --cuda"),
            "{msg}"
        );

        let mut p = gpu_box(ok.clone());
        p.driver = Err("libcuda.so.1: cannot open shared object file".into());
        let s = diagnose(&p);
        assert!(s.gpus_present, "device files count as GPUs present");
        assert!(matches!(s.problem, Some(CudaProblem::NoDriver(_))));

        let old = DriverFacts {
            cuda_version: Some(12040),
            release: Some("550.54.15".into()),
            ..ok.clone()
        };
        let msg = diagnose(&gpu_box(old)).problem.unwrap().to_string();
        for part in ["550.54.15", "CUDA up to 12.4", "CUDA 13.0 build", "R580"] {
            assert!(msg.contains(part), "{part} missing from: {msg}");
        }
        // Minor versions within one major are compatible (CUDA minor-version compatibility).
        let newer_minor = DriverFacts {
            cuda_version: Some(13020),
            ..ok.clone()
        };
        assert!(matches!(
            diagnose(&gpu_box(newer_minor)).problem,
            Some(CudaProblem::TorchSeesNone { .. })
        ));

        let none = DriverFacts {
            init: Some(100),
            devices: None,
            ..ok.clone()
        };
        let msg = diagnose(&gpu_box(none)).problem.unwrap().to_string();
        assert!(msg.contains("CUDA_ERROR_NO_DEVICE (100)"), "{msg}");
        let failed = DriverFacts {
            init: Some(999),
            devices: None,
            ..ok.clone()
        };
        assert_eq!(
            diagnose(&gpu_box(failed)).problem,
            Some(CudaProblem::InitFailed { init: 999 })
        );

        let mut p = gpu_box(ok);
        p.torch_cuda = Err("libcudnn.so.9: cannot open shared object file".into());
        let msg = diagnose(&p).problem.unwrap().to_string();
        assert!(
            msg.starts_with("libtorch's CUDA library could not be loaded: libcudnn.so.9"),
            "{msg}"
        );
    }

    #[test]
    fn driver_release_is_read_from_proc() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:00 UTC 2025\n\
                    GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(parse_release(text).as_deref(), Some("580.65.06"));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn this_machine_is_diagnosed_and_cuda_errors_say_why() {
        let status = cuda_status();
        if status.devices == 0 {
            let err = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
            assert!(!err.contains("0 CUDA device(s)"), "the cause must be named: {err}");
            assert_eq!(
                err,
                format!("CUDA requested but not usable: {}", status.problem.as_ref().unwrap())
            );
        }
    }

    #[test]
    fn auto_resolves_and_cpu_is_always_there() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        let auto = DeviceSpec::Auto.resolve().unwrap();
        assert_eq!(auto.is_cuda(), tch::Cuda::is_available());
    }
}
