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
type CtxFree = unsafe extern "C" fn(*mut c_void);

/// One libnftables context. Not thread-safe in C: used under a mutex.
struct Context {
    ctx: *mut c_void,
    new: CtxNew,
    free: CtxFree,
    buffer_output: CtxInt,
    buffer_error: CtxInt,
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
        let mut context = Context {
            new,
            free: std::mem::transmute::<*mut c_void, CtxFree>(symbol(c"nft_ctx_free")?),
            buffer_output,
            buffer_error,
            output: std::mem::transmute::<*mut c_void, CtxStr>(symbol(
                c"nft_ctx_get_output_buffer",
            )?),
            error: std::mem::transmute::<*mut c_void, CtxStr>(symbol(c"nft_ctx_get_error_buffer")?),
            set_flags: std::mem::transmute::<*mut c_void, SetFlags>(symbol(
                c"nft_ctx_output_set_flags",
            )?),
            run: std::mem::transmute::<*mut c_void, RunCmd>(symbol(c"nft_run_cmd_from_buffer")?),
            ctx: std::ptr::null_mut(),
        };
        context.fresh().then_some(context)
    }
}

impl Context {
    /// Puts a new libnftables context (with its own netlink socket) in
    /// place of the one it had, freed; false when none can be made (then
    /// `ctx` is null, and commands fail).
    fn fresh(&mut self) -> bool {
        // SAFETY: `new`, `free` and the buffer setters are libnftables'
        // own functions (see `load`); the old context, when there is one,
        // is not used again once freed, and the new one is checked before
        // use.
        unsafe {
            if !self.ctx.is_null() {
                (self.free)(self.ctx);
            }
            self.ctx = (self.new)(0);
            if self.ctx.is_null() {
                return false;
            }
            if (self.buffer_output)(self.ctx) != 0 || (self.buffer_error)(self.ctx) != 0 {
                (self.free)(self.ctx);
                self.ctx = std::ptr::null_mut();
                return false;
            }
        }
        true
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
    let mut context = lock.lock().unwrap_or_else(|e| e.into_inner());
    if context.ctx.is_null() && !context.fresh() {
        return Some(Err(anyhow::anyhow!(
            "nft: cannot make a libnftables context"
        )));
    }
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
    if rc != 0 {
        // A refused transaction can leave replies unread on the context's
        // netlink socket: a batch of 10,000 elements the kernel refuses
        // message by message overruns the socket's buffer ("No buffer
        // space available"), and the next command read what was left as
        // its own answer, the wrong sequence number: "cache initialization
        // failed: Protocol error". The next command gets a new context.
        context.fresh();
    }
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
