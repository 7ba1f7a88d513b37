//! What a `cuda` build needs from the machine, checked before any model loads, and where
//! CubeCL keeps the kernels it compiles and the autotune results it measures.
//!
//! The binary links no CUDA library: the driver API (`libcuda.so.1`, from the NVIDIA driver)
//! and NVRTC (`libnvrtc.so.12`, from the CUDA runtime) are loaded when first used.

use cubecl_runtime::config::cache::CacheConfig;
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
use cudarc::driver::CudaContext;
use std::path::Path;

/// Describes GPU `index` (name and memory), or says what is missing to use it.
pub(super) fn probe(index: usize) -> Result<String, String> {
    // SAFETY: only loads the library (dlopen) and reports whether it was found.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(format!(
            "cuda:{index} was requested but the NVIDIA driver library (libcuda.so.1) cannot be \
             loaded: run on a GPU node with the NVIDIA container toolkit (or device plugin), \
             or serve with --device cpu"
        ));
    }
    // SAFETY: as above, for NVRTC.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(
            "the NVIDIA driver is present but NVRTC (libnvrtc.so.12, part of the CUDA runtime) \
             cannot be loaded: use the CUDA image, or install cuda-nvrtc-12-8"
                .into(),
        );
    }
    let count = CudaContext::device_count()
        .map_err(|e| format!("the CUDA driver cannot list GPUs: {e}"))?;
    if index >= count.max(0) as usize {
        return Err(format!(
            "cuda:{index} does not exist: this machine shows {count} GPU(s) \
             (check CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu limit)"
        ));
    }
    let gpu = CudaContext::new(index).map_err(|e| format!("cannot open cuda:{index}: {e}"))?;
    let name = gpu.name().map_err(|e| format!("cuda:{index}: {e}"))?;
    let memory = gpu.total_mem().map_err(|e| format!("cuda:{index}: {e}"))?;
    Ok(format!(
        "{name}, {:.1} GiB",
        memory as f64 / (1u64 << 30) as f64
    ))
}

/// Points CubeCL's kernel (PTX) cache and autotune cache at `dir`, unless a config file sets
/// them or the config was already read.
pub(super) fn cache_kernels_in(dir: &Path) {
    if ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"]
        .iter()
        .any(|file| Path::new(file).exists())
    {
        return;
    }
    // Once read, the config cannot change (`set` would panic): the first caller wins.
    if CubeClRuntimeConfig::storage().lock().is_some() {
        return;
    }
    let mut config = CubeClRuntimeConfig::default().override_from_env();
    config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    CubeClRuntimeConfig::set(config);
}
