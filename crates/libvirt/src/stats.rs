//! Bulk domain statistics: one libvirt call for many domains, never waiting
//! on a domain whose job lock is held (VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT).
//!
//! Owns the FFI to virConnectGetAllDomainStats / virDomainListGetStats (the
//! virt crate's wrapper leaks the records) and the translation of libvirt's
//! typed parameters into `DomainStats`. Runs on a connection thread; it keeps
//! no state and computes no rates (vm/stats.rs does).

use std::collections::HashSet;
use std::ffi::CStr;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::HvError;

/// Everything csagent reports about one domain.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainStats {
    pub uuid: String,
    pub name: String,
    /// libvirt's virDomainState number (1 = running, 3 = paused, 5 = shutoff).
    pub state: i32,
    /// False when libvirt could not ask QEMU (its job was busy): only the
    /// figures libvirt keeps itself are present.
    pub complete: bool,
    pub cpu_time_ns: Option<u64>,
    pub vcpus: Option<u32>,
    pub balloon_current_kib: u64,
    pub balloon_maximum_kib: u64,
    pub rss_kib: u64,
    pub unused_kib: u64,
    pub available_kib: u64,
    pub disks: Vec<DiskStats>,
    pub nics: Vec<NicStats>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskStats {
    pub target: String,
    pub source: String,
    /// False when QEMU's I/O counters are missing (busy job).
    pub has_counters: bool,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_reqs: u64,
    pub write_reqs: u64,
    pub errors: u64,
    pub capacity: u64,
    pub allocation: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NicStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// libvirt's VIR_DOMAIN_RUNNING.
pub const STATE_RUNNING: i32 = 1;

/// What GetVmStats reports, and no more: the vcpu group (per-vCPU times
/// and a monitor query on every QEMU) is left out; vCPU counts come from the
/// host snapshot.
const GROUPS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK;

/// Which domains a round asks about.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every running domain, in one call.
    #[default]
    AllRunning,
    /// Every running domain except these UUIDs (quarantined as unresponsive).
    RunningExcept(HashSet<String>),
    /// Exactly these UUIDs (those that exist).
    Only(Vec<uuid::Uuid>),
}

/// One bulk round. Never waits for a domain's job; a domain busy in another
/// job comes back with `complete == false`.
pub fn collect(c: &Connect, sel: &Selection) -> Result<Vec<DomainStats>, HvError> {
    let flags = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
    let out = match sel {
        Selection::AllRunning => all(c, flags | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)?,
        Selection::RunningExcept(skip) => {
            let doms = c
                .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_RUNNING)
                .map_err(|e| HvError::libvirt("list_all_domains", e))?;
            let keep: Vec<Domain> = doms
                .into_iter()
                .filter(|d| d.uuid_string().is_ok_and(|u| !skip.contains(&u)))
                .collect();
            list(&keep, flags)?
        }
        Selection::Only(uuids) => {
            // A VM that vanished is simply absent from the answer.
            let doms: Vec<Domain> = uuids
                .iter()
                .filter_map(|u| c.lookup_domain_by_uuid_string(&u.to_string()).ok())
                .collect();
            list(&doms, flags)?
        }
    };
    Ok(out)
}

/// The classic per-domain way (what cloudstack-agent does): one info call,
/// one XML dump, memory stats, and per disk its I/O counters and size, per
/// NIC its counters: the same figures as the bulk call. Kept for the
/// benchmark that measures what the bulk call saves; no production path
/// uses it.
pub fn collect_per_domain(c: &Connect) -> Result<usize, HvError> {
    let doms = c
        .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_RUNNING)
        .map_err(|e| HvError::libvirt("list_all_domains", e))?;
    let mut n = 0;
    for d in &doms {
        let Ok(_info) = d.info() else { continue };
        let Ok(xml) = d.xml_desc(0) else { continue };
        let Ok(parsed) = csagent_domain::parse(&xml) else {
            continue;
        };
        n += usize::from(d.memory_stats(0).is_ok());
        for disk in &parsed.spec.devices.disks {
            n += usize::from(d.block_stats(&disk.target).is_ok());
            n += usize::from(d.block_info(&disk.target, 0).is_ok());
        }
        for nic in &parsed.spec.devices.interfaces {
            if let Some(dev) = &nic.target_dev {
                n += usize::from(d.interface_stats(dev).is_ok());
            }
        }
    }
    Ok(n)
}

fn all(c: &Connect, flags: u32) -> Result<Vec<DomainStats>, HvError> {
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: the connection pointer is valid for the life of `c`; libvirt
    // fills `recs` with a NULL-terminated array we free below.
    let n = unsafe { sys::virConnectGetAllDomainStats(c.as_ptr(), GROUPS, &mut recs, flags) };
    take_records(n, recs, "get_all_domain_stats")
}

fn list(doms: &[Domain], flags: u32) -> Result<Vec<DomainStats>, HvError> {
    if doms.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: every Domain outlives this call; the array is NULL-terminated
    // as virDomainListGetStats requires.
    let mut ptrs: Vec<sys::virDomainPtr> = doms.iter().map(|d| unsafe { d.as_ptr() }).collect();
    ptrs.push(std::ptr::null_mut());
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: as above; `recs` is freed by take_records.
    let n = unsafe { sys::virDomainListGetStats(ptrs.as_mut_ptr(), GROUPS, &mut recs, flags) };
    take_records(n, recs, "domain_list_get_stats")
}

/// Copies the records into Rust values and frees libvirt's list.
fn take_records(
    n: i32,
    recs: *mut sys::virDomainStatsRecordPtr,
    call: &'static str,
) -> Result<Vec<DomainStats>, HvError> {
    if n < 0 {
        let e = virt::error::Error::last_error();
        return Err(HvError::libvirt(call, e));
    }
    Ok(super::ffi::take_records(n, recs, record))
}

fn record(rec: &sys::virDomainStatsRecord) -> DomainStats {
    let (uuid, name) = super::ffi::ident(rec.dom);
    let mut s = DomainStats {
        uuid,
        name,
        ..DomainStats::default()
    };
    let n = usize::try_from(rec.nparams).unwrap_or(0);
    let mut seen_monitor = false;
    for i in 0..n {
        // SAFETY: params holds nparams entries.
        let p = unsafe { &*rec.params.add(i) };
        // SAFETY: field is a NUL-terminated string within its 80 bytes.
        let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_string_lossy();
        let v = value(p);
        seen_monitor |= from_monitor(&field);
        apply(&mut s, &field, v);
    }
    s.complete = s.state != STATE_RUNNING || seen_monitor;
    s
}

/// Figures libvirt can only get by asking QEMU, i.e. present only when the
/// domain's job could be taken.
fn from_monitor(field: &str) -> bool {
    field == "balloon.rss" || (field.starts_with("block.") && field.ends_with(".rd.bytes"))
}

#[derive(Debug)]
enum Value {
    Num(u64),
    Text(String),
}

fn value(p: &sys::virTypedParameter) -> Value {
    // SAFETY: the union member read matches the type libvirt set.
    unsafe {
        match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => Value::Num(u64::try_from(p.value.i).unwrap_or(0)),
            sys::VIR_TYPED_PARAM_UINT => Value::Num(u64::from(p.value.ui)),
            sys::VIR_TYPED_PARAM_LLONG => Value::Num(u64::try_from(p.value.l).unwrap_or(0)),
            sys::VIR_TYPED_PARAM_ULLONG => Value::Num(p.value.ul),
            sys::VIR_TYPED_PARAM_BOOLEAN => Value::Num(u64::from(p.value.b != 0)),
            sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                Value::Text(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
            }
            _ => Value::Num(0),
        }
    }
}

fn apply(s: &mut DomainStats, field: &str, v: Value) {
    let num = match &v {
        Value::Num(n) => *n,
        Value::Text(_) => 0,
    };
    match field {
        "state.state" => s.state = i32::try_from(num).unwrap_or(0),
        "cpu.time" => s.cpu_time_ns = Some(num),
        "vcpu.current" => s.vcpus = u32::try_from(num).ok(),
        "balloon.current" => s.balloon_current_kib = num,
        "balloon.maximum" => s.balloon_maximum_kib = num,
        "balloon.rss" => s.rss_kib = num,
        "balloon.unused" => s.unused_kib = num,
        "balloon.available" => s.available_kib = num,
        _ => {
            if let Some(rest) = field.strip_prefix("block.") {
                indexed(&mut s.disks, rest, |d, key| disk_field(d, key, v));
            } else if let Some(rest) = field.strip_prefix("net.") {
                indexed(&mut s.nics, rest, |n, key| nic_field(n, key, num, v));
            }
        }
    }
}

/// `"3.rd.bytes"` -> entry 3 (created on demand), key `"rd.bytes"`.
fn indexed<T: Default>(list: &mut Vec<T>, rest: &str, set: impl FnOnce(&mut T, &str)) {
    let Some((idx, key)) = rest.split_once('.') else {
        return; // "block.count"
    };
    let Ok(i) = idx.parse::<usize>() else { return };
    // libvirt numbers devices densely from 0; a bogus huge index is ignored.
    if i > 4096 {
        return;
    }
    if list.len() <= i {
        list.resize_with(i + 1, T::default);
    }
    set(&mut list[i], key);
}

fn disk_field(d: &mut DiskStats, key: &str, v: Value) {
    let n = match v {
        Value::Text(t) => {
            match key {
                "name" => d.target = t,
                "path" => d.source = t,
                _ => {}
            }
            return;
        }
        Value::Num(n) => n,
    };
    match key {
        "rd.bytes" => {
            d.read_bytes = n;
            d.has_counters = true;
        }
        "wr.bytes" => d.write_bytes = n,
        "rd.reqs" => d.read_reqs = n,
        "wr.reqs" => d.write_reqs = n,
        "errors" => d.errors = n,
        "capacity" => d.capacity = n,
        "allocation" => d.allocation = n,
        _ => {}
    }
}

fn nic_field(nic: &mut NicStats, key: &str, n: u64, v: Value) {
    match key {
        "name" => {
            if let Value::Text(t) = v {
                nic.name = t;
            }
        }
        "rx.bytes" => nic.rx_bytes = n,
        "rx.pkts" => nic.rx_packets = n,
        "rx.errs" => nic.rx_errors = n,
        "rx.drop" => nic.rx_drops = n,
        "tx.bytes" => nic.tx_bytes = n,
        "tx.pkts" => nic.tx_packets = n,
        "tx.errs" => nic.tx_errors = n,
        "tx.drop" => nic.tx_drops = n,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_land_in_their_slots() {
        let mut s = DomainStats::default();
        apply(&mut s, "state.state", Value::Num(1));
        apply(&mut s, "block.1.name", Value::Text("vdb".into()));
        apply(&mut s, "block.1.rd.bytes", Value::Num(7));
        apply(&mut s, "net.0.tx.pkts", Value::Num(3));
        apply(&mut s, "block.count", Value::Num(2));
        assert_eq!(s.state, STATE_RUNNING);
        assert_eq!(s.disks.len(), 2);
        assert_eq!(s.disks[1].target, "vdb");
        assert!(s.disks[1].has_counters && !s.disks[0].has_counters);
        assert_eq!(s.nics[0].tx_packets, 3);
        apply(&mut s, "block.999999.rd.bytes", Value::Num(1));
        assert_eq!(s.disks.len(), 2);
    }
}
