//! The 40-byte big-endian header in front of every CloudStack message plaintext
//! (`com.cloud.agent.transport.Request`): version, flags, sequence, body size and the three ids.
//! It owns the byte layout, the flag bits and the rule by which an answer's header echoes its
//! request's; it must not look at or size the body itself (that is [`crate::message`]'s job).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Size of the header on the wire.
pub const HEADER_LEN: usize = 40;

/// What can be wrong with a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("message header needs {HEADER_LEN} bytes, got {0}")]
    Short(usize),
    #[error("unsupported protocol version byte {0} (only 0 = v1 is spoken)")]
    UnsupportedVersion(u8),
    #[error("negative body size {0} in message header")]
    NegativeSize(i32),
    #[error("body size {0} does not fit the header's signed 32-bit field")]
    SizeTooLarge(usize),
}

/// Protocol version byte. Only v1 (byte 0) is sent by CloudStack; v2 (byte 1) is refused by
/// the management server, so it is refused here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    V1,
}

impl Version {
    fn to_byte(self) -> u8 {
        match self {
            Version::V1 => 0,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, HeaderError> {
        match byte {
            0 => Ok(Version::V1),
            other => Err(HeaderError::UnsupportedVersion(other)),
        }
    }
}

/// The header's 16 flag bits. Bits without a name here are kept as received so that a
/// header always re-encodes to the bytes it came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No flags: a plain answer from the agent.
    pub const NONE: Flags = Flags(0);
    /// A request (absent: an answer, CloudStack's `Response`).
    pub const REQUEST: Flags = Flags(0x01);
    /// Stop executing the array's remaining commands after one fails.
    pub const STOP_ON_ERROR: Flags = Flags(0x02);
    /// The MS serialises these per host.
    pub const IN_SEQUENCE: Flags = Flags(0x04);
    /// Sent by the management server.
    pub const FROM_SERVER: Flags = Flags(0x20);
    /// A control message.
    pub const CONTROL: Flags = Flags(0x40);
    /// The body is gzip'd.
    pub const COMPRESSED: Flags = Flags(0x80);

    const NAMED: [(Flags, &'static str); 6] = [
        (Flags::REQUEST, "REQUEST"),
        (Flags::STOP_ON_ERROR, "STOP_ON_ERROR"),
        (Flags::IN_SEQUENCE, "IN_SEQUENCE"),
        (Flags::FROM_SERVER, "FROM_SERVER"),
        (Flags::CONTROL, "CONTROL"),
        (Flags::COMPRESSED, "COMPRESSED"),
    ];

    /// Flags from raw bits, unnamed bits included.
    pub const fn from_bits_retain(bits: u16) -> Self {
        Flags(bits)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True if every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }

    /// Sets or clears `other` according to `on`.
    pub fn set(&mut self, other: Flags, on: bool) {
        if on {
            self.insert(other);
        } else {
            self.remove(other);
        }
    }

    /// Bits set here that have no name above.
    pub const fn unknown_bits(self) -> u16 {
        let mut known = 0;
        let mut i = 0;
        while i < Self::NAMED.len() {
            known |= Self::NAMED[i].0 .0;
            i += 1;
        }
        self.0 & !known
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = Self::NAMED
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| (*name).to_owned())
            .collect();
        if self.unknown_bits() != 0 {
            names.push(format!("{:#06x}", self.unknown_bits()));
        }
        write!(f, "Flags({:#06x}: {})", self.0, names.join(" | "))
    }
}

/// The sequence number by which the MS matches answers to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sequence(pub i64);

/// A management server's id (`mgmtId`); -1 when the agent does not know it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MgmtId(pub i64);

/// A host id as used by `agentId` and `via`; -1 before the MS has assigned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HostId(pub i64);

impl MgmtId {
    pub const UNKNOWN: MgmtId = MgmtId(-1);
}

impl HostId {
    pub const UNKNOWN: HostId = HostId(-1);
}

/// The message header, field by field in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// Unused by CloudStack (always 0); kept so a header re-encodes exactly.
    pub reserved: u8,
    pub flags: Flags,
    pub seq: Sequence,
    /// Length of the *uncompressed* JSON body, even when the body is gzip'd.
    pub size: u32,
    pub mgmt_id: MgmtId,
    pub agent_id: HostId,
    pub via: HostId,
}

impl Header {
    /// True for a request, false for an answer.
    pub fn is_request(&self) -> bool {
        self.flags.contains(Flags::REQUEST)
    }

    /// True if the body is gzip'd.
    pub fn is_compressed(&self) -> bool {
        self.flags.contains(Flags::COMPRESSED)
    }

    /// The header of the answer to this request: the same sequence and ids, the same
    /// stop-on-error and in-sequence bits, from-server inverted, and no request bit.
    /// Size and compression are left for the encoder; the MS, answering an agent's request,
    /// puts its own id in `mgmt_id`, which the caller then sets.
    pub fn answer(&self) -> Header {
        let mut flags = Flags::NONE;
        flags.set(
            Flags::STOP_ON_ERROR,
            self.flags.contains(Flags::STOP_ON_ERROR),
        );
        flags.set(Flags::IN_SEQUENCE, self.flags.contains(Flags::IN_SEQUENCE));
        flags.set(Flags::FROM_SERVER, !self.flags.contains(Flags::FROM_SERVER));
        Header {
            flags,
            size: 0,
            ..*self
        }
    }

    /// Sets `size` from a body length, failing above `i32::MAX` (the wire field is signed).
    pub fn set_size(&mut self, len: usize) -> Result<(), HeaderError> {
        self.size = u32::try_from(len)
            .ok()
            .filter(|s| i32::try_from(*s).is_ok())
            .ok_or(HeaderError::SizeTooLarge(len))?;
        Ok(())
    }

    /// The 40 bytes that go on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.version.to_byte();
        out[1] = self.reserved;
        out[2..4].copy_from_slice(&self.flags.bits().to_be_bytes());
        out[4..12].copy_from_slice(&self.seq.0.to_be_bytes());
        out[12..16].copy_from_slice(&self.size.to_be_bytes());
        out[16..24].copy_from_slice(&self.mgmt_id.0.to_be_bytes());
        out[24..32].copy_from_slice(&self.agent_id.0.to_be_bytes());
        out[32..40].copy_from_slice(&self.via.0.to_be_bytes());
        out
    }

    /// Reads a header from the first 40 bytes of `bytes`; the rest is ignored.
    pub fn decode(bytes: &[u8]) -> Result<Header, HeaderError> {
        let raw: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(HeaderError::Short(bytes.len()))?;
        let size = i32::from_be_bytes(sub(raw, 12));
        Ok(Header {
            version: Version::from_byte(raw[0])?,
            reserved: raw[1],
            flags: Flags::from_bits_retain(u16::from_be_bytes(sub(raw, 2))),
            seq: Sequence(i64::from_be_bytes(sub(raw, 4))),
            size: u32::try_from(size).map_err(|_| HeaderError::NegativeSize(size))?,
            mgmt_id: MgmtId(i64::from_be_bytes(sub(raw, 16))),
            agent_id: HostId(i64::from_be_bytes(sub(raw, 24))),
            via: HostId(i64::from_be_bytes(sub(raw, 32))),
        })
    }
}

/// The `N` bytes of `raw` starting at `at`; callers only use offsets inside the header.
fn sub<const N: usize>(raw: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_command() -> Header {
        Header {
            version: Version::V1,
            reserved: 0,
            flags: Flags::REQUEST | Flags::STOP_ON_ERROR | Flags::IN_SEQUENCE | Flags::FROM_SERVER,
            seq: Sequence(1001),
            size: 1407,
            mgmt_id: MgmtId(345_049_098_498),
            agent_id: HostId(7),
            via: HostId(7),
        }
    }

    #[test]
    fn encodes_the_documented_start_command_header() {
        let expected =
            "00000027 00000000000003e9 0000057f 0000005056876902 0000000000000007 0000000000000007";
        let expected = hex::decode(expected.replace(' ', "")).unwrap();
        assert_eq!(start_command().encode().to_vec(), expected);
        assert_eq!(Header::decode(&expected).unwrap(), start_command());
    }

    #[test]
    fn answer_echoes_request() {
        let answer = start_command().answer();
        assert_eq!(answer.flags.bits(), 0x0006);
        assert_eq!(answer.seq, Sequence(1001));
        assert_eq!(answer.via, HostId(7));
        assert!(!answer.is_request());
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Header::decode(&[0; 39]), Err(HeaderError::Short(39)));
        let mut v2 = start_command().encode();
        v2[0] = 1;
        assert_eq!(Header::decode(&v2), Err(HeaderError::UnsupportedVersion(1)));
        let mut negative = start_command().encode();
        negative[12] = 0x80;
        assert!(matches!(
            Header::decode(&negative),
            Err(HeaderError::NegativeSize(_))
        ));
    }

    #[test]
    fn unknown_flag_bits_survive() {
        let mut bytes = start_command().encode();
        bytes[2] = 0x01;
        let header = Header::decode(&bytes).unwrap();
        assert_eq!(header.flags.unknown_bits(), 0x0100);
        assert_eq!(header.encode(), bytes);
        assert!(format!("{:?}", header.flags).contains("0x0100"));
    }

    #[test]
    fn size_must_fit_i32() {
        let mut header = start_command();
        assert!(header.set_size(i32::MAX as usize).is_ok());
        assert!(header.set_size(i32::MAX as usize + 1).is_err());
    }
}
