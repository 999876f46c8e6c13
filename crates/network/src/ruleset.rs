//! Renders the security groups of every VM on the host into ONE nftables
//! JSON document that replaces csagent's two tables in a single transaction.
//!
//! Layout (csagent's tables only; other tables are never named):
//! - `table bridge csagent`: layer 2, per tap. `prerouting` (priority -300,
//!   before br_netfilter's conntrack) sends frames from a tap to
//!   `out-<tap>`: anti-spoofing (MAC, ARP, IPv4, IPv6 sources), no DHCP
//!   server replies, no router advertisements, only ARP/IPv4/IPv6.
//!   `forward` (priority -200) sends frames to a tap to `in-<tap>`: IP
//!   unicast must be addressed to the tap's own addresses.
//! - `table inet csagent`: layer 3, stateful. br_netfilter hands bridged IP
//!   packets to the inet `forward` hook with the *bridge* as iif/oif, so a
//!   VM is found by (bridge, its own address), which the layer-2 stage makes
//!   trustworthy. Egress chains `return` (so the receiver's ingress chain
//!   still runs); ingress chains `accept` or fall to `drop`.
//!
//! Pure: builds serde_json values; runs nothing.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::secgroup::{Cidr, Direction, Protocol, Rule, VmPort, VmRules};
use super::VmUuid;

pub const TABLE: &str = "csagent";

/// An object from (key, value) pairs, moving the values in. `json!` would
/// re-serialise every interpolated `Value` (a deep copy at each nesting
/// level), which made rendering a 100-rule group cost milliseconds.
fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}
/// One `(bridge . address) : jump chain` element of a forward dispatch map.
fn dispatch_entry(bridge: &str, addr: &str, chain: &str) -> Value {
    let key = obj([("concat", Value::Array(vec![bridge.into(), addr.into()]))]);
    Value::Array(vec![key, jump(chain)])
}
fn m(op: &str, left: Value, right: Value) -> Value {
    obj([(
        "match",
        obj([("op", op.into()), ("left", left), ("right", right)]),
    )])
}
fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}
fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn set(items: Vec<Value>) -> Value {
    obj([("set", Value::Array(items))])
}
fn verdict(v: &str) -> Value {
    json!({ v: null })
}
fn jump(target: &str) -> Value {
    json!({"jump": {"target": target}})
}
fn cidr(c: &Cidr) -> Value {
    let full = if c.is_ipv4() { 32 } else { 128 };
    if c.prefix_len() == full {
        json!(c.addr().to_string())
    } else {
        json!({"prefix": {"addr": c.addr().to_string(), "len": c.prefix_len()}})
    }
}
fn addrs<T: ToString>(a: &[T]) -> Vec<Value> {
    a.iter().map(|x| json!(x.to_string())).collect()
}

/// Accumulates the commands of one transaction.
struct Doc {
    cmds: Vec<Value>,
}

impl Doc {
    fn table(&mut self, family: &str) {
        let t = json!({"family": family, "name": TABLE});
        // add+delete+add: replaces the table whether or not it existed, in
        // the same transaction as the new content.
        self.cmds.push(json!({"add": {"table": t.clone()}}));
        self.cmds.push(json!({"delete": {"table": t.clone()}}));
        self.cmds.push(json!({"add": {"table": t}}));
    }
    fn base_chain(&mut self, family: &str, name: &str, hook: &str, prio: i32) {
        self.cmds.push(json!({"add": {"chain": {
            "family": family, "table": TABLE, "name": name,
            "type": "filter", "hook": hook, "prio": prio, "policy": "accept"}}}));
    }
    fn chain(&mut self, family: &str, name: &str) {
        self.cmds
            .push(json!({"add": {"chain": {"family": family, "table": TABLE, "name": name}}}));
    }
    fn rule(&mut self, family: &str, chain: &str, expr: Vec<Value>) {
        let rule = obj([
            ("family", family.into()),
            ("table", TABLE.into()),
            ("chain", chain.into()),
            ("expr", Value::Array(expr)),
        ]);
        self.cmds.push(obj([("add", obj([("rule", rule)]))]));
    }
}

/// The transaction that deletes csagent's tables (if present) and nothing else.
pub fn render_delete() -> Value {
    let mut cmds = Vec::new();
    for family in ["bridge", "inet"] {
        let t = json!({"family": family, "name": TABLE});
        cmds.push(json!({"add": {"table": t.clone()}}));
        cmds.push(json!({"delete": {"table": t}}));
    }
    obj([("nftables", Value::Array(cmds))])
}

/// The whole csagent ruleset for `vms`, as one transaction.
pub fn render(vms: &BTreeMap<VmUuid, VmRules>) -> Value {
    let mut d = Doc { cmds: Vec::new() };
    render_bridge(&mut d, vms);
    render_inet(&mut d, vms);
    obj([("nftables", Value::Array(d.cmds))])
}

/// The transaction that replaces only `v`'s two inet chains (flush and
/// refill): valid when the VM's ports, and so the layer-2 table and the
/// forward dispatch maps, are what is already in force. Its cost does not
/// grow with the number of other VMs on the host.
pub fn render_vm_update(v: &VmRules) -> Value {
    let mut d = Doc { cmds: Vec::new() };
    for dir in [Direction::Egress, Direction::Ingress] {
        let name = chain_name(v.vm, dir);
        d.cmds.push(json!({"flush": {"chain": {
            "family": "inet", "table": TABLE, "name": name}}}));
        for e in vm_chain(v, dir) {
            d.rule("inet", &name, e);
        }
    }
    obj([("nftables", Value::Array(d.cmds))])
}

fn render_bridge(d: &mut Doc, vms: &BTreeMap<VmUuid, VmRules>) {
    d.table("bridge");
    d.base_chain("bridge", "prerouting", "prerouting", -300);
    d.base_chain("bridge", "forward", "forward", -200);
    let ports: Vec<&VmPort> = vms.values().flat_map(|v| v.ports.iter()).collect();
    let mut from_tap = Vec::new();
    let mut to_tap = Vec::new();
    for p in &ports {
        let (out, inn) = (format!("out-{}", p.tap), format!("in-{}", p.tap));
        d.chain("bridge", &out);
        d.chain("bridge", &inn);
        for e in anti_spoof(p) {
            d.rule("bridge", &out, e);
        }
        for e in to_own_addresses(p) {
            d.rule("bridge", &inn, e);
        }
        from_tap.push(Value::Array(vec![p.tap.as_str().into(), jump(&out)]));
        to_tap.push(Value::Array(vec![p.tap.as_str().into(), jump(&inn)]));
    }
    if !ports.is_empty() {
        let vmap =
            |key: &str, items| obj([("vmap", obj([("key", meta(key)), ("data", set(items))]))]);
        d.rule("bridge", "prerouting", vec![vmap("iifname", from_tap)]);
        d.rule("bridge", "forward", vec![vmap("oifname", to_tap)]);
    }
}

/// Layer-2 rules for frames sent by the guest on `p`.
fn anti_spoof(p: &VmPort) -> Vec<Vec<Value>> {
    let mac = json!(p.mac.to_string());
    let drop = || verdict("drop");
    let mut v4 = addrs(&p.ipv4());
    let v6 = addrs(&p.ipv6());
    let mut r = vec![
        vec![m("!=", payload("ether", "saddr"), mac.clone()), drop()],
        vec![m("!=", payload("arp", "saddr ether"), mac), drop()],
    ];
    // ARP probes (RFC 5227) come from 0.0.0.0.
    let mut arp_ok = v4.clone();
    arp_ok.push(json!("0.0.0.0"));
    r.push(vec![
        m("!=", payload("arp", "saddr ip"), set(arp_ok)),
        drop(),
    ]);
    // A guest must not answer DHCP or advertise itself as a router.
    r.push(vec![
        m(
            "==",
            payload("udp", "sport"),
            set(vec![json!(67), json!(547)]),
        ),
        drop(),
    ]);
    r.push(vec![
        m("==", payload("icmpv6", "type"), json!("nd-router-advert")),
        drop(),
    ]);
    // DHCP discovery before the guest has an address.
    r.push(vec![
        m("==", payload("ip", "saddr"), json!("0.0.0.0")),
        m("==", payload("udp", "dport"), json!(67)),
        verdict("return"),
    ]);
    if v4.is_empty() {
        r.push(vec![m("==", payload("ether", "type"), json!("ip")), drop()]);
    } else {
        r.push(vec![
            m("!=", payload("ip", "saddr"), set(std::mem::take(&mut v4))),
            drop(),
        ]);
    }
    // Duplicate address detection and MLD come from the unspecified address.
    r.push(vec![
        m("==", payload("ip6", "saddr"), json!("::")),
        m("==", meta("l4proto"), json!("ipv6-icmp")),
        verdict("return"),
    ]);
    r.push(vec![m("!=", payload("ip6", "saddr"), set(v6)), drop()]);
    r.push(vec![
        m(
            "!=",
            payload("ether", "type"),
            set(vec![json!("arp"), json!("ip"), json!("ip6")]),
        ),
        drop(),
    ]);
    r
}

/// Layer-2 rules for frames to the guest: IP unicast only to its addresses.
fn to_own_addresses(p: &VmPort) -> Vec<Vec<Value>> {
    let mut v4 = addrs(&p.ipv4());
    v4.push(json!("255.255.255.255"));
    v4.push(json!({"prefix": {"addr": "224.0.0.0", "len": 4}}));
    let mut v6 = addrs(&p.ipv6());
    v6.push(json!({"prefix": {"addr": "ff00::", "len": 8}}));
    vec![
        vec![m("!=", payload("ip", "daddr"), set(v4)), verdict("drop")],
        vec![m("!=", payload("ip6", "daddr"), set(v6)), verdict("drop")],
    ]
}

fn chain_name(vm: VmUuid, dir: Direction) -> String {
    let d = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    format!("vm-{}-{d}", vm.0.simple())
}

fn render_inet(d: &mut Doc, vms: &BTreeMap<VmUuid, VmRules>) {
    d.table("inet");
    d.base_chain("inet", "forward", "forward", 0);
    let mut egress = (Vec::new(), Vec::new());
    let mut ingress = (Vec::new(), Vec::new());
    for v in vms.values() {
        let (out, inn) = (
            chain_name(v.vm, Direction::Egress),
            chain_name(v.vm, Direction::Ingress),
        );
        d.chain("inet", &out);
        d.chain("inet", &inn);
        for e in vm_chain(v, Direction::Egress) {
            d.rule("inet", &out, e);
        }
        for e in vm_chain(v, Direction::Ingress) {
            d.rule("inet", &inn, e);
        }
        for p in &v.ports {
            let br = p.bridge.as_str();
            for a in p.ipv4() {
                egress.0.push(dispatch_entry(br, &a.to_string(), &out));
                ingress.0.push(dispatch_entry(br, &a.to_string(), &inn));
            }
            for a in p.ipv6() {
                egress.1.push(dispatch_entry(br, &a.to_string(), &out));
                ingress.1.push(dispatch_entry(br, &a.to_string(), &inn));
            }
        }
    }
    // Egress of the sender first, then ingress of the receiver.
    for (dev, field, items) in [
        ("iifname", ("ip", "saddr"), egress.0),
        ("iifname", ("ip6", "saddr"), egress.1),
        ("oifname", ("ip", "daddr"), ingress.0),
        ("oifname", ("ip6", "daddr"), ingress.1),
    ] {
        if items.is_empty() {
            continue;
        }
        let key = obj([(
            "concat",
            Value::Array(vec![meta(dev), payload(field.0, field.1)]),
        )]);
        d.rule(
            "inet",
            "forward",
            vec![obj([("vmap", obj([("key", key), ("data", set(items))]))])],
        );
    }
}

/// Rules of one VM's ingress or egress chain.
fn vm_chain(v: &VmRules, dir: Direction) -> Vec<Vec<Value>> {
    let (pass, default_drop) = match dir {
        Direction::Ingress => ("accept", true),
        Direction::Egress => ("return", v.has_egress_rules()),
    };
    let ct = |states: Vec<Value>| m("in", json!({"ct": {"key": "state"}}), Value::Array(states));
    let mut r = vec![
        vec![
            ct(vec![json!("established"), json!("related")]),
            verdict(pass),
        ],
        vec![ct(vec![json!("invalid")]), verdict("drop")],
    ];
    r.extend(always_allowed(dir).into_iter().map(|mut e| {
        e.push(verdict(pass));
        e
    }));
    for rule in v.rules.iter().filter(|x| x.direction == dir) {
        for mut e in rule_exprs(rule) {
            e.push(verdict(pass));
            r.push(e);
        }
    }
    if default_drop {
        r.push(vec![verdict("drop")]);
    }
    r
}

/// Infrastructure traffic no group can forbid: neighbour discovery and the
/// guest's DHCP client (servers are stopped by the layer-2 stage).
fn always_allowed(dir: Direction) -> Vec<Vec<Value>> {
    let nd = match dir {
        Direction::Ingress => vec![134, 135, 136],
        Direction::Egress => vec![133, 135, 136],
    };
    let (v4, v6) = match dir {
        Direction::Ingress => ((67, 68), (547, 546)),
        Direction::Egress => ((68, 67), (546, 547)),
    };
    vec![
        vec![m(
            "==",
            payload("icmpv6", "type"),
            set(nd.into_iter().map(|t| json!(t)).collect()),
        )],
        vec![
            m("==", meta("nfproto"), json!("ipv4")),
            m("==", payload("udp", "sport"), json!(v4.0)),
            m("==", payload("udp", "dport"), json!(v4.1)),
        ],
        vec![
            m("==", meta("nfproto"), json!("ipv6")),
            m("==", payload("udp", "sport"), json!(v6.0)),
            m("==", payload("udp", "dport"), json!(v6.1)),
        ],
    ]
}

/// One nft rule (without verdict) per address family the rule covers.
fn rule_exprs(rule: &Rule) -> Vec<Vec<Value>> {
    let field = match rule.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let v4: Vec<Value> = rule
        .cidrs
        .iter()
        .filter(|c| c.is_ipv4())
        .map(cidr)
        .collect();
    let v6: Vec<Value> = rule
        .cidrs
        .iter()
        .filter(|c| !c.is_ipv4())
        .map(cidr)
        .collect();
    let mut families: Vec<Option<(&str, Vec<Value>)>> = Vec::new();
    if rule.cidrs.is_empty() {
        families.push(None);
    }
    if !v4.is_empty() {
        families.push(Some(("ip", v4)));
    }
    if !v6.is_empty() {
        families.push(Some(("ip6", v6)));
    }
    families
        .into_iter()
        .filter(|f| family_fits(rule.protocol, f.as_ref().map(|x| x.0)))
        .map(|f| {
            let mut e = Vec::new();
            if let Some((fam, list)) = f {
                e.push(m("==", payload(fam, field), set(list)));
            }
            e.extend(proto_exprs(rule));
            e
        })
        .collect()
}

fn family_fits(p: Protocol, fam: Option<&str>) -> bool {
    !matches!(
        (p, fam),
        (Protocol::Icmp, Some("ip6")) | (Protocol::Icmpv6, Some("ip"))
    )
}

fn proto_exprs(rule: &Rule) -> Vec<Value> {
    let (name, l4) = match rule.protocol {
        Protocol::All => return Vec::new(),
        Protocol::Tcp => ("tcp", "tcp"),
        Protocol::Udp => ("udp", "udp"),
        Protocol::Icmp => ("icmp", "icmp"),
        Protocol::Icmpv6 => ("icmpv6", "ipv6-icmp"),
    };
    let mut e = vec![m("==", meta("l4proto"), json!(l4))];
    if let Some(p) = rule.ports {
        let right = if p.start() == p.end() {
            json!(p.start())
        } else {
            json!({"range": [p.start(), p.end()]})
        };
        e.push(m("==", payload(name, "dport"), right));
    }
    if let Some(i) = rule.icmp {
        e.push(m("==", payload(name, "type"), json!(i.icmp_type)));
        if let Some(c) = i.code {
            e.push(m("==", payload(name, "code"), json!(c)));
        }
    }
    e
}
