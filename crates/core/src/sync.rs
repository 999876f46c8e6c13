//! Locking the agent's shared in-memory state.
//!
//! Every `std::sync::Mutex` and `RwLock` in csagent guards data that each
//! critical section changes in one step (a map insert or removal, a few field
//! writes), so a panic while one is held cannot leave the data half-changed.
//! A poisoned lock is therefore still usable: taking it anyway keeps the
//! agent serving, where propagating the poison would turn one panic into a
//! failure of every later caller (heartbeats, commands, metrics).
//!
//! The only module allowed to call std's lock methods (clippy.toml bans them
//! everywhere else).
#![allow(clippy::disallowed_methods)]

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking over a lock poisoned by a panic elsewhere.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, taking over a lock poisoned by a panic elsewhere.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, taking over a lock poisoned by a panic elsewhere.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
