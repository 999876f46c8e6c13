//! csagent's end-to-end tests, one module per area, in one binary: real
//! libvirt (test:///default and qemu:///system with TCG guests), real
//! qemu-img, real netns/nftables, real TLS with test-made certificates, and
//! the built csagent and csagent-mgmt binaries.
//!
//! Tests that stop the host's shared daemons (libvirtd) live in their own
//! binary (tests/hypervisor_restart.rs): cargo runs test binaries one after
//! another, so nothing here runs while libvirtd is down.

// Tests drive the real tools (virsh, qemu-img, ip, nft) and take std locks
// directly: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

mod cli_check;
mod cli_domain;
mod config;
mod domain_golden;
mod domain_model;
mod domain_roundtrip;
mod ha_book;
mod ha_isolation;
mod ha_storage;
mod host_sensors;
mod host_system;
mod identity_enroll;
mod identity_rotation;
mod lab_ha;
mod lab_hosts;
mod lab_migration;
mod layering;
mod link_commands;
mod link_failover;
mod link_host;
mod link_security;
mod link_session;
mod link_wire;
mod migration;
mod network_netns;
mod ops_metrics;
mod ops_notify;
mod ops_status;
mod setup_tools;
mod storage_hang;
mod storage_local;
mod storage_pools;
mod storage_snapshots;
mod storage_templates;
mod storage_volumes;
mod vm_defaults;
mod vm_events;
mod vm_guest;
mod vm_lifecycle;
mod vm_ops;
