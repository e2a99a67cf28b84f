//! Keeping the GPU backends' autotune results and compiled kernels across processes.
//!
//! cubecl (under Burn's GPU backends) compiles each kernel the first time a process launches it and benchmarks
//! candidate kernels for every new product shape (autotune). Both can be cached on disk, but by default the
//! compiled kernels are not cached at all and the autotune results land in the `target/` directory of the
//! nearest Cargo workspace above the working directory. [`persist_kernel_caches`] points both at one directory
//! (the user cache directory by default, [`default_root`]):
//!
//! - `autotune/`: autotune results; cubecl keeps them per device (by adapter or GPU name) inside.
//! - `cuda/<gpu model>-<driver>/`: compiled CUDA kernels (PTX). cubecl's key for a compiled kernel does not
//!   name the GPU architecture, so the directory does: the model of the machine's NVIDIA GPUs and the driver
//!   version, read from `/proc/driver/nvidia`. A machine with GPUs of two different models, or without that
//!   file, gets no kernel cache (autotune results are still kept). wgpu compiles through the driver, which has
//!   its own shader caches (Mesa's `~/.cache/mesa_shader_cache`, the vendors'), so blip2 sets none for it.
//!
//! A `cubecl.toml` the user wrote (found from the working directory upwards, as cubecl looks for it) wins for
//! any cache it sets. The settings are read once per process, when the first GPU device starts: call this
//! before any GPU tensor exists; afterwards it changes nothing and says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::backend::BackendKind;

/// What [`persist_kernel_caches`] set up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelCaches {
    /// Where autotune results go; `None` when cubecl was already configured or the user's `cubecl.toml` chose.
    pub autotune: Option<PathBuf>,
    /// Where compiled kernels go (CUDA only); `None` as above, for wgpu, or when the GPU model is not known.
    pub kernels: Option<PathBuf>,
    /// Why a cache was not set, for a log line.
    pub note: Option<String>,
}

/// `$XDG_CACHE_HOME/blip2/kernels`, else `$HOME/.cache/blip2/kernels`; `None` without either.
pub fn default_root() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(cache.join("blip2").join("kernels"))
}

/// Points cubecl's autotune cache, and for CUDA its compiled-kernel cache, at directories under `root` (see the
/// module docs). Does nothing for the CPU backends, or when cubecl's settings were already read in this process.
pub fn persist_kernel_caches(kind: BackendKind, root: &Path) -> KernelCaches {
    if matches!(kind, BackendKind::Flex | BackendKind::NdArray) {
        return KernelCaches::default();
    }
    #[cfg(any(
        feature = "wgpu",
        feature = "vulkan",
        feature = "metal",
        feature = "cuda"
    ))]
    return configure(kind, root);
    #[cfg(not(any(
        feature = "wgpu",
        feature = "vulkan",
        feature = "metal",
        feature = "cuda"
    )))]
    {
        let _ = root;
        KernelCaches {
            note: Some(format!("{} is not compiled in", kind.name())),
            ..KernelCaches::default()
        }
    }
}

#[cfg(any(
    feature = "wgpu",
    feature = "vulkan",
    feature = "metal",
    feature = "cuda"
))]
fn configure(kind: BackendKind, root: &Path) -> KernelCaches {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    use std::sync::Arc;

    let mut state = CubeClRuntimeConfig::storage().lock();
    if state.is_some() {
        return KernelCaches {
            note: Some("cubecl was already configured in this process".into()),
            ..KernelCaches::default()
        };
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    let mut caches = KernelCaches::default();
    // `Target` is the default: a `cubecl.toml` that names another place is the user's choice.
    if matches!(config.autotune.cache, CacheConfig::Target) {
        let dir = root.join("autotune");
        config.autotune.cache = CacheConfig::File(dir.clone());
        caches.autotune = Some(dir);
    }
    if kind == BackendKind::Cuda && config.compilation.cache.is_none() {
        match nvidia_gpu_key(Path::new("/proc")) {
            Ok(key) => {
                let dir = root.join("cuda").join(key);
                config.compilation.cache = Some(CacheConfig::File(dir.clone()));
                caches.kernels = Some(dir);
            }
            Err(why) => caches.note = Some(format!("no compiled-kernel cache: {why}")),
        }
    }
    *state = Some(Arc::new(config));
    caches
}

/// `<model>-<driver version>` of the machine's NVIDIA GPUs, from `<proc>/driver/nvidia`, with every character
/// outside `[A-Za-z0-9._-]` made `_`. An error when the files are missing or the GPUs are of several models.
pub fn nvidia_gpu_key(proc: &Path) -> Result<String, String> {
    let nvidia = proc.join("driver").join("nvidia");
    let version_file = nvidia.join("version");
    let version = std::fs::read_to_string(&version_file)
        .map_err(|e| format!("{}: {e}", version_file.display()))?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Thu Sep 25 ..."
    let driver = version
        .lines()
        .next()
        .and_then(|line| {
            line.split_whitespace().find(|word| {
                word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.')
            })
        })
        .ok_or_else(|| format!("{}: no driver version in it", version_file.display()))?;
    let gpus = nvidia.join("gpus");
    let entries = std::fs::read_dir(&gpus).map_err(|e| format!("{}: {e}", gpus.display()))?;
    let mut models = BTreeSet::new();
    for entry in entries.flatten() {
        let info = entry.path().join("information");
        let text =
            std::fs::read_to_string(&info).map_err(|e| format!("{}: {e}", info.display()))?;
        let model = text
            .lines()
            .find_map(|line| line.strip_prefix("Model:"))
            .map(str::trim)
            .ok_or_else(|| format!("{}: no `Model:` line", info.display()))?;
        models.insert(model.to_string());
    }
    let model = match models.len() {
        0 => return Err(format!("{}: no GPU listed", gpus.display())),
        1 => models.pop_first().expect("one model"),
        _ => return Err(format!("GPUs of several models ({models:?})")),
    };
    Ok(format!("{model}-{driver}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(models: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let nvidia = dir.path().join("driver/nvidia");
        std::fs::create_dir_all(nvidia.join("gpus")).unwrap();
        std::fs::write(
            nvidia.join("version"),
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build\n\
             GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
        )
        .unwrap();
        for (i, model) in models.iter().enumerate() {
            let gpu = nvidia.join(format!("gpus/0000:{i:02x}:00.0"));
            std::fs::create_dir_all(&gpu).unwrap();
            std::fs::write(
                gpu.join("information"),
                format!("Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0\n"),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn the_kernel_directory_names_the_gpu_model_and_driver() {
        let proc = fake_proc(&["NVIDIA H200", "NVIDIA H200"]);
        assert_eq!(
            nvidia_gpu_key(proc.path()).unwrap(),
            "NVIDIA_H200-580.95.05"
        );
    }

    #[test]
    fn mixed_or_missing_gpus_get_no_kernel_cache() {
        let mixed = fake_proc(&["NVIDIA H200", "NVIDIA A100-SXM4-80GB"]);
        let err = nvidia_gpu_key(mixed.path()).unwrap_err();
        assert!(err.contains("several models"), "{err}");
        let none = fake_proc(&[]);
        let err = nvidia_gpu_key(none.path()).unwrap_err();
        assert!(err.contains("no GPU listed"), "{err}");
        let err = nvidia_gpu_key(Path::new("/nonexistent-proc")).unwrap_err();
        assert!(
            err.contains("/nonexistent-proc/driver/nvidia/version"),
            "{err}"
        );
    }
}
