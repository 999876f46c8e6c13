//! The raw libvirt calls the virt crate (0.5) does not wrap: domain event
//! subscription, the connection close callback, bulk domain stats, and
//! aborting a job or switching a migration to post-copy.
//!
//! This is the only file of the crate with `unsafe`; every block says why it
//! is sound. Callbacks run on libvirt's event-loop thread: they never panic
//! across the FFI boundary (catch_unwind), never make a libvirt call that
//! talks to the daemon (uuid and name are read from the local domain object),
//! and only hand a plain Rust value to a `Sink`, which must not block.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use virt::connect::Connect;
use virt::sys;

/// What a raw domain callback saw, before translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Lifecycle {
        event: i32,
        detail: i32,
    },
    Reboot,
    IoError {
        device: String,
        action: i32,
        reason: String,
    },
    /// The balloon moved: not a power change, but cached memory is stale.
    BalloonChange,
}

/// Receives callbacks. Implementations must return quickly and never block.
pub trait Sink: Send + Sync + 'static {
    fn domain(&self, uuid: String, name: String, raw: RawEvent);
    fn closed(&self, reason: i32);
}

type SinkRef = Arc<dyn Sink>;

/// The callbacks registered on one connection. Dropping it (or `cancel`)
/// deregisters them; it must go before the connection it was made on.
pub struct Subscription {
    conn: sys::virConnectPtr,
    ids: Vec<c_int>,
    close_cb: bool,
}

// SAFETY: the pointer is only used for deregistration calls, which libvirt
// allows from any thread; the Connect it came from outlives the Subscription
// (see `Live` in mod.rs).
unsafe impl Send for Subscription {}
// SAFETY: no method takes &self and touches the pointer concurrently.
unsafe impl Sync for Subscription {}

/// A typed domain event callback as the generic callback type
/// `virConnectDomainEventRegisterAny` takes, the cast C code makes with
/// VIR_DOMAIN_EVENT_CALLBACK. The types in parentheses are the callback's
/// arguments between the domain and the opaque pointer.
macro_rules! as_generic {
    ($cb:ident ($($arg:ty),*) $(-> $ret:ty)?) => {
        // SAFETY: libvirt calls the callback registered for an event id
        // with exactly that id's signature, which `$cb` has (the compiler
        // checks it against the source type below); the cast only changes
        // the type RegisterAny is given.
        Some(unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    $($arg,)*
                    *mut c_void,
                ) $(-> $ret)?,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >($cb)
        })
    };
}

/// Lifecycle, reboot, balloon-change and I/O-error-reason events for every
/// domain, plus the close callback. A failure to register any domain event is an error (the
/// caller reconnects later); a driver without close callbacks is not.
pub fn subscribe(conn: &Connect, sink: SinkRef) -> Result<Subscription, String> {
    // SAFETY: as_ptr returns the live connection pointer held by `conn`.
    let ptr = unsafe { conn.as_ptr() };
    let mut sub = Subscription {
        conn: ptr,
        ids: Vec::new(),
        close_cb: false,
    };
    let table: [(u32, sys::virConnectDomainEventGenericCallback); 4] = [
        (
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            as_generic!(on_lifecycle(c_int, c_int) -> c_int),
        ),
        (sys::VIR_DOMAIN_EVENT_ID_REBOOT, Some(on_reboot)),
        (
            sys::VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE,
            as_generic!(on_balloon(std::ffi::c_ulonglong)),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
            as_generic!(on_io_error(*const c_char, *const c_char, c_int, *const c_char)),
        ),
    ];
    for (id, cb) in table {
        let opaque = Arc::into_raw(Arc::new(Arc::clone(&sink))) as *mut c_void;
        // SAFETY: ptr is live; opaque is a leaked Arc<SinkRef> that libvirt
        // hands back to free_sink exactly once when the callback goes away.
        let rc = unsafe {
            sys::virConnectDomainEventRegisterAny(
                ptr,
                std::ptr::null_mut(),
                id as c_int,
                cb,
                opaque,
                Some(free_sink),
            )
        };
        if rc < 0 {
            // SAFETY: registration failed, so libvirt did not keep opaque.
            unsafe { free_sink(opaque) };
            return Err(format!(
                "cannot subscribe to domain event {id}: {}",
                last_error()
            ));
        }
        sub.ids.push(rc);
    }
    let opaque = Arc::into_raw(Arc::new(sink)) as *mut c_void;
    // SAFETY: as above, for the close callback.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(ptr, Some(on_close), opaque, Some(free_sink))
    };
    if rc < 0 {
        // SAFETY: registration failed, so libvirt did not keep opaque.
        unsafe { free_sink(opaque) };
        tracing::debug!(error = %last_error(), "libvirt driver has no close callback; liveness is polled");
    } else {
        sub.close_cb = true;
    }
    Ok(sub)
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            // SAFETY: conn is still live (Subscription drops first); a
            // failure (dead connection) only means the callback is gone.
            let _ = unsafe { sys::virConnectDomainEventDeregisterAny(self.conn, id) };
        }
        if self.close_cb {
            // SAFETY: as above.
            let _ = unsafe { sys::virConnectUnregisterCloseCallback(self.conn, Some(on_close)) };
        }
    }
}

/// Closes a connection without the virt crate's panic on a failed close
/// (a connection to a dead daemon may report one).
pub fn close_quietly(conn: Connect) {
    // SAFETY: we take over the one reference `conn` owned and release it
    // exactly once; forget keeps Connect's Drop from releasing it again.
    unsafe {
        let ptr = conn.as_ptr();
        std::mem::forget(conn);
        let _ = sys::virConnectClose(ptr);
    }
}

/// One domain's entry of the heartbeat snapshot's virConnectGetAllDomainStats
/// call (state group only; GetVmStats' records are stats::DomainStats).
#[derive(Debug, Clone, Default)]
pub struct StateRecord {
    pub uuid: String,
    pub name: String,
    /// libvirt domain id; 0 (or u32::MAX) while inactive.
    pub id: u32,
    pub state: Option<i32>,
    pub reason: Option<i32>,
}

/// One virConnectGetAllDomainStats call.
pub fn all_domain_stats(
    conn: &Connect,
    groups: u32,
    flags: u32,
) -> Result<Vec<StateRecord>, String> {
    let mut list: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: conn is live; on success libvirt stores a NULL-terminated array
    // in `list` which we free below with virDomainStatsRecordListFree.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), groups, &mut list, flags) };
    if n < 0 {
        return Err(last_error());
    }
    Ok(take_records(n, list, read_record))
}

/// Reads the `n` records libvirt returned in `list` with `read`, then frees
/// the list. Shared by every bulk-stats call (the snapshot's and
/// GetVmStats'): one place owns the record list's lifetime.
pub(super) fn take_records<T>(
    n: i32,
    list: *mut sys::virDomainStatsRecordPtr,
    read: impl Fn(&sys::virDomainStatsRecord) -> T,
) -> Vec<T> {
    let n = usize::try_from(n).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: i < n, the array holds n valid record pointers.
        let rec = unsafe { &**list.add(i) };
        out.push(read(rec));
    }
    if !list.is_null() {
        // SAFETY: list came from libvirt's stats call and is freed once.
        unsafe { sys::virDomainStatsRecordListFree(list) };
    }
    out
}

fn read_record(rec: &sys::virDomainStatsRecord) -> StateRecord {
    let (uuid, name) = ident(rec.dom);
    // SAFETY: rec.dom is a valid domain pointer owned by the record;
    // virDomainGetID reads the local object only.
    let id = unsafe { sys::virDomainGetID(rec.dom) };
    let mut s = StateRecord {
        uuid,
        name,
        id,
        ..StateRecord::default()
    };
    for j in 0..usize::try_from(rec.nparams).unwrap_or(0) {
        // SAFETY: j < nparams, params points to nparams initialized entries.
        let p = unsafe { &*rec.params.add(j) };
        // SAFETY: field is a NUL-terminated string of at most 80 bytes.
        let field = unsafe { CStr::from_ptr(p.field.as_ptr()) };
        match (field.to_bytes(), p.type_ as u32) {
            (b"state.state", sys::VIR_TYPED_PARAM_INT) => {
                // SAFETY: type_ is INT, so the union's `i` member is the one set.
                s.state = Some(unsafe { p.value.i })
            }
            (b"state.reason", sys::VIR_TYPED_PARAM_INT) => {
                // SAFETY: type_ is INT, so the union's `i` member is the one set.
                s.reason = Some(unsafe { p.value.i })
            }
            _ => {}
        }
    }
    s
}

/// UUID and name from the local domain object (no daemon round trip).
pub(super) fn ident(dom: sys::virDomainPtr) -> (String, String) {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: dom is valid for the duration of the callback/record; buf has
    // the VIR_UUID_STRING_BUFLEN bytes the call writes.
    let uuid = unsafe {
        if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        } else {
            String::new()
        }
    };
    // SAFETY: the name is owned by the domain object and copied at once.
    let name = unsafe { cstr(sys::virDomainGetName(dom)) };
    (uuid, name)
}

/// A copy of a C string owned by libvirt; empty for NULL.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string for the duration of the call.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the function contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn last_error() -> String {
    virt::error::Error::last_error().message().to_string()
}

/// The sink behind an opaque pointer, for the length of one callback.
///
/// # Safety
/// `opaque` is a pointer made by `Arc::into_raw(Arc<SinkRef>)` that libvirt
/// has not freed yet (guaranteed while the callback is registered).
unsafe fn sink<'a>(opaque: *mut c_void) -> &'a SinkRef {
    // SAFETY: per the function contract.
    unsafe { &*(opaque as *const SinkRef) }
}

fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(callback = what, "libvirt callback panicked; event dropped");
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    guarded("lifecycle", || {
        let (uuid, name) = ident(dom);
        // SAFETY: libvirt passes the opaque it was registered with.
        unsafe { sink(opaque) }.domain(uuid, name, RawEvent::Lifecycle { event, detail });
    });
    0
}

unsafe extern "C" fn on_reboot(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    guarded("reboot", || {
        let (uuid, name) = ident(dom);
        // SAFETY: libvirt passes the opaque it was registered with.
        unsafe { sink(opaque) }.domain(uuid, name, RawEvent::Reboot);
    });
}

unsafe extern "C" fn on_balloon(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _actual_kib: std::ffi::c_ulonglong,
    opaque: *mut c_void,
) {
    guarded("balloon-change", || {
        let (uuid, name) = ident(dom);
        // SAFETY: libvirt passes the opaque it was registered with.
        unsafe { sink(opaque) }.domain(uuid, name, RawEvent::BalloonChange);
    });
}

unsafe extern "C" fn on_io_error(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _src: *const c_char,
    alias: *const c_char,
    action: c_int,
    reason: *const c_char,
    opaque: *mut c_void,
) {
    guarded("io-error", || {
        let (uuid, name) = ident(dom);
        // SAFETY: libvirt passes valid (or NULL) strings for the callback's
        // duration, and the opaque it was registered with.
        let raw = unsafe {
            RawEvent::IoError {
                device: cstr(alias),
                action,
                reason: cstr(reason),
            }
        };
        // SAFETY: as above.
        unsafe { sink(opaque) }.domain(uuid, name, raw);
    });
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    guarded("close", || {
        // SAFETY: libvirt passes the opaque it was registered with.
        unsafe { sink(opaque) }.closed(reason);
    });
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    guarded("free", || {
        // SAFETY: opaque came from Arc::into_raw in `subscribe` and libvirt
        // frees each registration's opaque exactly once.
        drop(unsafe { Arc::from_raw(opaque as *const SinkRef) });
    });
}

/// Aborts the domain's current job (a migration); the domain stays where it
/// was.
pub fn abort_job(dom: &virt::domain::Domain) -> Result<(), virt::error::Error> {
    // SAFETY: `dom` is a live domain object borrowed for this call; libvirt
    // only reads the pointer and takes no ownership.
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// Switches a running pre-copy migration (started with POSTCOPY) to
/// post-copy.
pub fn start_post_copy(dom: &virt::domain::Domain) -> Result<(), virt::error::Error> {
    // SAFETY: as in abort_job: a borrowed live domain, flags 0.
    let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}
