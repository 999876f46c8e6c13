//! The one boundary to the kernel's links: rtnetlink requests to create, look
//! up, change and delete bridges, 802.1Q sub-interfaces and VXLAN devices,
//! their VXLAN flood entries (bridge fdb), and to read link statistics.
//!
//! It works in the network namespace the netlink socket was opened in (the
//! calling thread's when [`Netlink::connect`] runs). It knows nothing about
//! ownership or reference counting (that is bridge.rs) and never deletes a
//! link on its own initiative.

use std::net::IpAddr;

use futures::stream::TryStreamExt;
use futures::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVlan, LinkVxlan};

use super::error::{NetworkError, Result};
use super::names::{IfName, Mtu, VlanId, Vni};

/// The IANA VXLAN UDP port; Linux's own default (8472) is not interoperable.
pub const VXLAN_PORT: u16 = 4789;

/// What the kernel says about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "vlan", "vxlan", "veth", ... (None for
    /// physical NICs).
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// Lower device (vlan parent).
    pub parent: Option<u32>,
    pub mtu: u32,
    pub up: bool,
    pub vlan_id: Option<u16>,
    pub vxlan: Option<VxlanInfo>,
    pub stats: LinkStats,
}

/// VXLAN attributes read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub underlay: Option<u32>,
    pub port: u16,
    pub group: Option<IpAddr>,
}

/// Kernel counters of one link, from the host's side of it (rx = received by
/// this device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Parameters of a VXLAN device to create.
#[derive(Debug, Clone)]
pub struct VxlanParams {
    pub vni: Vni,
    pub underlay: u32,
    /// Multicast group (flooding by multicast), or None for unicast peers
    /// reached through fdb entries.
    pub group: Option<IpAddr>,
    pub mtu: Mtu,
}

/// A netlink route socket with its background task.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl_err(op: &'static str, object: &str, e: rtnetlink::Error) -> NetworkError {
    let source = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    NetworkError::Netlink {
        op,
        object: object.to_owned(),
        source,
    }
}

/// The errno of a netlink failure, if it is one.
pub fn errno_of(e: &NetworkError) -> Option<i32> {
    match e {
        NetworkError::Netlink { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's network namespace
    /// and drives it on the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetworkError::Io {
            op: "opening a netlink route socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Every link of the namespace, in one dump.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("dump links", "namespace", e))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    /// The link named `name`, or None.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(parse_link)),
            Err(e) => {
                let err = nl_err("get link", name, e);
                if errno_of(&err) == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    pub async fn add_bridge(&self, name: &IfName, mtu: Mtu) -> Result<()> {
        // STP off and forward delay 0: guest bridges are leaves, and a 15 s
        // learning delay would lose a booting guest's DHCP. nf_call_* make
        // br_netfilter hand bridged IP traffic to the inet table (conntrack)
        // on this bridge only, whatever the global sysctls say.
        let msg = LinkBridge::new(name.as_str())
            .mtu(mtu.get())
            .forward_delay(0)
            .nf_call_iptables(true)
            .nf_call_ip6tables(true)
            .build();
        self.add(msg, "create bridge", name).await
    }

    pub async fn add_vlan(&self, name: &IfName, parent: u32, vlan: VlanId, mtu: Mtu) -> Result<()> {
        let msg = LinkVlan::new(name.as_str(), parent, vlan.get())
            .mtu(mtu.get())
            .build();
        self.add(msg, "create vlan", name).await.map_err(|e| {
            if matches!(errno_of(&e), Some(libc::EOPNOTSUPP)) {
                NetworkError::Unavailable {
                    what: format!("create VLAN sub-interface {name}"),
                    module: "8021q",
                    detail: "802.1Q VLAN links are not supported".into(),
                }
            } else {
                e
            }
        })
    }

    pub async fn add_vxlan(&self, name: &IfName, p: &VxlanParams) -> Result<()> {
        let mut b = LinkVxlan::new(name.as_str(), p.vni.get())
            .dev(p.underlay)
            .port(VXLAN_PORT)
            .learning(true)
            .mtu(p.mtu.get());
        b = match p.group {
            Some(IpAddr::V4(g)) => b.group(g),
            Some(IpAddr::V6(g)) => b.group6(g),
            None => b,
        };
        self.add(b.build(), "create vxlan", name)
            .await
            .map_err(|e| {
                if matches!(errno_of(&e), Some(libc::EOPNOTSUPP)) {
                    NetworkError::Unavailable {
                        what: format!("create VXLAN device {name}"),
                        module: "vxlan",
                        detail: "VXLAN links are not supported".into(),
                    }
                } else {
                    e
                }
            })
    }

    async fn add(&self, msg: LinkMessage, op: &'static str, name: &IfName) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(op, name.as_str(), e))
    }

    async fn set(&self, msg: LinkMessage, op: &'static str, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_err(op, &format!("ifindex {index}"), e))
    }

    /// Sets the interface alias (`ip link set ... alias`), csagent's mark of
    /// ownership.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_owned()))
            .build();
        self.set(msg, "set alias", index).await
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.set(msg, "set master", index).await
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set(msg, "set up", index).await
    }

    pub async fn delete(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| nl_err("delete link", &format!("ifindex {index}"), e))
    }

    /// Appends a flood entry (all-zero MAC) sending BUM traffic of the VXLAN
    /// device `index` to `remote` (`bridge fdb append 00:..:00 dst REMOTE`).
    pub async fn fdb_append(&self, index: u32, remote: IpAddr) -> Result<()> {
        let msg = flood_entry(index, remote);
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.ack(req, "append fdb entry", index).await
    }

    /// Removes one flood entry added by [`Self::fdb_append`].
    pub async fn fdb_delete(&self, index: u32, remote: IpAddr) -> Result<()> {
        let msg = flood_entry(index, remote);
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.ack(req, "delete fdb entry", index).await
    }

    async fn ack(
        &self,
        req: NetlinkMessage<RouteNetlinkMessage>,
        op: &'static str,
        index: u32,
    ) -> Result<()> {
        let object = format!("ifindex {index}");
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(|e| nl_err(op, &object, e))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(nl_err(op, &object, rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    /// Remote addresses of the flood (all-zero MAC) entries of VXLAN device
    /// `index`.
    pub async fn fdb_remotes(&self, index: u32) -> Result<Vec<IpAddr>> {
        let mut req = self.handle.neighbours().get();
        req.message_mut().header.family = AddressFamily::Bridge;
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("dump fdb", &format!("ifindex {index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::LinkLocalAddress(l) if l.iter().all(|b| *b == 0)))
            })
            .filter_map(|m| m.attributes.iter().find_map(destination))
            .collect())
    }
}

/// NDA_DST of an fdb entry. In the bridge family the parser cannot tell v4
/// from v6 and hands back raw bytes; their length decides.
fn destination(a: &NeighbourAttribute) -> Option<IpAddr> {
    match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            if let Ok(v4) = <[u8; 4]>::try_from(b.as_slice()) {
                Some(IpAddr::from(v4))
            } else {
                <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from)
            }
        }
        _ => None,
    }
}

fn flood_entry(index: u32, remote: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLocalAddress(vec![0; 6]));
    m.attributes
        .push(NeighbourAttribute::Destination(match remote {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    m
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Link::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Link(i) => l.parent = Some(*i),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Stats64(s) => {
                l.stats = LinkStats {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                }
            }
            LinkAttribute::LinkInfo(infos) => parse_info(infos, &mut l),
            _ => {}
        }
    }
    l
}

fn parse_info(infos: &[LinkInfo], l: &mut Link) {
    for i in infos {
        match i {
            LinkInfo::Kind(k) => l.kind = Some(kind_name(k)),
            LinkInfo::Data(InfoData::Vlan(v)) => {
                l.vlan_id = v.iter().find_map(|x| match x {
                    InfoVlan::Id(id) => Some(*id),
                    _ => None,
                })
            }
            LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = Some(parse_vxlan(v)),
            _ => {}
        }
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Vlan => "vlan".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Tun => "tun".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn parse_vxlan(v: &[InfoVxlan]) -> VxlanInfo {
    let mut x = VxlanInfo::default();
    for a in v {
        match a {
            InfoVxlan::Id(id) => x.vni = *id,
            InfoVxlan::Link(i) => x.underlay = Some(*i),
            InfoVxlan::Port(p) => x.port = *p,
            InfoVxlan::Group(g) if !g.is_unspecified() => x.group = Some(IpAddr::V4(*g)),
            InfoVxlan::Group6(g) if !g.is_unspecified() => x.group = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    x
}
