//! glibc malloc tuning for a small, long-lived process: one arena when the runtime has one
//! worker thread (the config loader runs on a blocking thread and would otherwise get an arena
//! of its own that keeps its peak), and returning freed pages to the kernel after a config is
//! applied (loading and compiling a large config allocates far more than the proxy keeps).
//! No-ops on other C libraries. Allocates nothing and owns no state.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    /// `M_ARENA_MAX` from `<malloc.h>`.
    pub const M_ARENA_MAX: c_int = -8;

    // The C library is linked by std anyway; both calls only tune the allocator.
    unsafe extern "C" {
        pub safe fn mallopt(param: c_int, value: c_int) -> c_int;
        pub safe fn malloc_trim(pad: usize) -> c_int;
    }
}

/// Limit malloc to `n` arenas (call before spawning threads).
pub fn limit_arenas(n: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let n = std::ffi::c_int::try_from(n.max(1)).unwrap_or(std::ffi::c_int::MAX);
        glibc::mallopt(glibc::M_ARENA_MAX, n);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Give the pages malloc holds but does not use back to the kernel.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::malloc_trim(0);
}
