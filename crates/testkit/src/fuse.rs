//! A filesystem that hangs: what a dead NFS server or a wedged shared mount
//! looks like to the agent.
//!
//! `HungMount::over(dir)` mounts a FUSE filesystem on `dir` whose server
//! never answers, not even the kernel's INIT, so every call that reaches it
//! (stat, open, readdir) blocks. No FUSE library is involved: the test holds
//! `/dev/fuse` itself and simply never reads it. `release` (also on drop)
//! closes the device, which makes the kernel abort the connection so every
//! blocked call returns ENOTCONN, then detaches the mount. It touches
//! nothing but `dir`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

pub struct HungMount {
    dir: PathBuf,
    device: Option<OwnedFd>,
}

impl HungMount {
    /// Mounts the hanging filesystem on `dir` (an existing directory). Err
    /// says why it cannot run here (no /dev/fuse, not root, no FUSE).
    pub fn over(dir: &Path) -> Result<HungMount, String> {
        let device = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            device.as_raw_fd()
        );
        mount(
            Some("csat-hang"),
            dir,
            Some("fuse.csat-hang"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|e| format!("cannot mount a FUSE filesystem on {}: {e}", dir.display()))?;
        Ok(HungMount {
            dir: dir.to_path_buf(),
            device: Some(device),
        })
    }

    /// Ends the hang: blocked calls fail, and the mount is gone.
    pub fn release(&mut self) {
        if let Some(device) = self.device.take() {
            drop(device);
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calls_hang_until_released_then_fail() {
        let dir = tempfile::Builder::new()
            .prefix("csat-hang-")
            .tempdir()
            .unwrap();
        let mut m = match HungMount::over(dir.path()) {
            Ok(m) => m,
            Err(why) => {
                crate::skip!("{why}");
                return;
            }
        };
        let probe = dir.path().join("anything");
        let call = std::thread::spawn(move || std::fs::metadata(probe));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!call.is_finished(), "a stat on the hung mount returned");
        m.release();
        assert!(call.join().unwrap().is_err());
        assert!(
            std::fs::read_dir(dir.path()).is_ok(),
            "the mount is still there"
        );
    }
}
