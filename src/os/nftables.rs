//! nft commands in-process, through libnftables (the library the `nft`
//! binary is a thin front end of), loaded with dlopen when present.
//!
//! Why: a block must reach the kernel before a fast scanner has finished.
//! Spawning `nft` costs about 16 ms a transaction here, the library call
//! 0.1 ms. The library is optional at run time (no build dependency): when
//! it cannot be loaded, or `TCPWATCH_LIBNFTABLES=0` is set, callers use the
//! `nft` binary instead, with the same scripts and the same results.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

const LIBRARY: &CStr = c"libnftables.so.1";
/// `NFT_CTX_OUTPUT_JSON` in `<nftables/libnftables.h>`.
const OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// One libnftables context. Not thread-safe in C: used under a mutex.
struct Context {
    ctx: *mut c_void,
    output: CtxStr,
    error: CtxStr,
    set_flags: SetFlags,
    run: RunCmd,
}

// SAFETY: the context is only touched with the mutex in `library()` held.
unsafe impl Send for Context {}

fn library() -> Option<&'static Mutex<Context>> {
    static LOADED: OnceLock<Option<Mutex<Context>>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            if std::env::var("TCPWATCH_LIBNFTABLES").as_deref() == Ok("0") {
                return None;
            }
            load().map(Mutex::new)
        })
        .as_ref()
}

fn load() -> Option<Context> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to
    // the signature libnftables 1.x declares for it, and the handle is never
    // closed, so the pointers stay valid for the life of the process.
    unsafe {
        let handle = libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let symbol = |name: &CStr| {
            let p = libc::dlsym(handle, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let new: CtxNew = std::mem::transmute(symbol(c"nft_ctx_new")?);
        let buffer_output: CtxInt = std::mem::transmute(symbol(c"nft_ctx_buffer_output")?);
        let buffer_error: CtxInt = std::mem::transmute(symbol(c"nft_ctx_buffer_error")?);
        let context = Context {
            output: std::mem::transmute::<*mut c_void, CtxStr>(symbol(
                c"nft_ctx_get_output_buffer",
            )?),
            error: std::mem::transmute::<*mut c_void, CtxStr>(symbol(c"nft_ctx_get_error_buffer")?),
            set_flags: std::mem::transmute::<*mut c_void, SetFlags>(symbol(
                c"nft_ctx_output_set_flags",
            )?),
            run: std::mem::transmute::<*mut c_void, RunCmd>(symbol(c"nft_run_cmd_from_buffer")?),
            ctx: new(0),
        };
        if context.ctx.is_null()
            || buffer_output(context.ctx) != 0
            || buffer_error(context.ctx) != 0
        {
            return None;
        }
        Some(context)
    }
}

/// Whether commands run in-process.
pub fn available() -> bool {
    library().is_some()
}

/// Runs an nft script (what `nft -f -` takes; `json` is `nft -j`) and returns
/// its output; `None` when the library is not available. An error is the
/// first line nft printed, as `nft: <cause>`, like the binary's.
pub fn run(script: &str, json: bool) -> Option<anyhow::Result<String>> {
    let lock = library()?;
    let Ok(script) = CString::new(script) else {
        return Some(Err(anyhow::anyhow!("nft: script contains a NUL byte")));
    };
    let context = lock.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: `ctx` is a live context owned by `context`, used under the
    // lock; the buffers returned are owned by the context and copied out
    // before the next call.
    let (rc, output, error) = unsafe {
        (context.set_flags)(context.ctx, if json { OUTPUT_JSON } else { 0 });
        let rc = (context.run)(context.ctx, script.as_ptr());
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        (
            rc,
            text((context.output)(context.ctx)),
            text((context.error)(context.ctx)),
        )
    };
    Some(if rc == 0 {
        Ok(output)
    } else {
        let cause = error
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("command failed")
            .to_string();
        Err(anyhow::anyhow!("nft: {cause}"))
    })
}
