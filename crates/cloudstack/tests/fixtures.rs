//! Byte-exact checks of the codec against the golden fixtures recorded from CloudStack's own
//! `Request`/`Response`/Gson classes (copied into `tests/fixtures/`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use csagent_cloudstack::frame::{self, FrameHeader, Reassembler};
use csagent_cloudstack::message;
use csagent_cloudstack::{Envelope, Header, Message};

/// TLS 1.2 AES-GCM record overhead in the recorded frames: 5-byte header, 8-byte nonce, 16-byte tag.
const TLS12_GCM_OVERHEAD: usize = 5 + 8 + 16;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> Vec<u8> {
    fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_hex(name: &str) -> Vec<u8> {
    let text = String::from_utf8(read(name)).unwrap();
    hex::decode(text.trim()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every fixture name that has a header, e.g. `StartCommand`.
fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter_map(|file| file.strip_suffix(".hdr.hex").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The frames of `StartCommand-large.frames.hex`: (frame header bytes, record plaintext).
fn recorded_frames() -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = String::from_utf8(read("StartCommand-large.frames.hex")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (header, plaintext) = line.split_once(' ').unwrap();
            (
                hex::decode(header).unwrap(),
                hex::decode(plaintext).unwrap(),
            )
        })
        .collect()
}

/// The message plaintext of a fixture: header + JSON, or for a gzip'd one the recorded frames.
fn wire_plaintext(name: &str, header: &Header, json: &[u8]) -> Vec<u8> {
    if header.is_compressed() {
        assert_eq!(name, "StartCommand-large", "only this fixture has frames");
        return recorded_frames().into_iter().flat_map(|(_, p)| p).collect();
    }
    [&header.encode()[..], json].concat()
}

/// Checks one fixture end to end; returns what differed.
fn check_fixture(name: &str) -> Result<(), String> {
    let hdr = read_hex(&format!("{name}.hdr.hex"));
    let json = read(&format!("{name}.json"));
    let header = Header::decode(&hdr).map_err(|e| format!("header: {e}"))?;
    if header.encode()[..] != hdr[..] {
        return Err("header does not re-encode to the same bytes".into());
    }
    if header.size as usize != json.len() {
        return Err(format!(
            "header size {} != JSON {}",
            header.size,
            json.len()
        ));
    }
    let envelope = Envelope::parse(&json).map_err(|e| format!("parse: {e}"))?;
    let written = envelope.to_json().map_err(|e| format!("write: {e}"))?;
    if written != json {
        return Err(format!(
            "JSON differs at byte {}",
            first_difference(&written, &json)
        ));
    }
    let wire = wire_plaintext(name, &header, &json);
    let message = Message::decode(&wire).map_err(|e| format!("message: {e}"))?;
    if message.header != header || message.body != envelope {
        return Err("decoded message differs from its parts".into());
    }
    let encoded = message.encode().map_err(|e| format!("encode: {e}"))?;
    if header.is_compressed() {
        // Our deflate stream is not zlib's, so compare what a peer gets out of it.
        return check_compressed(&encoded, &wire, &json);
    }
    if encoded != wire {
        return Err(format!(
            "message differs at byte {}",
            first_difference(&encoded, &wire)
        ));
    }
    Ok(())
}

/// A gzip'd message we encoded must carry the same header and gzip header as the recording and
/// inflate to the same JSON.
fn check_compressed(encoded: &[u8], recorded: &[u8], json: &[u8]) -> Result<(), String> {
    const GZIP_HEADER_END: usize = 40 + 10;
    if encoded[..GZIP_HEADER_END] != recorded[..GZIP_HEADER_END] {
        return Err("message or gzip header differs from the recording".into());
    }
    let (_, inflated) = message::decode_raw(encoded).map_err(|e| format!("re-decode: {e}"))?;
    if inflated != json {
        return Err("our gzip'd body does not inflate to the JSON".into());
    }
    Ok(())
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

#[test]
fn every_fixture_round_trips_byte_for_byte() {
    let names = fixture_names();
    assert!(names.len() >= 55, "found only {} fixtures", names.len());
    let failures: Vec<String> = names
        .iter()
        .filter_map(|name| check_fixture(name).err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "failing fixtures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_json_fixture_has_a_header() {
    let names = fixture_names();
    for entry in fs::read_dir(dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if let Some(name) = file.strip_suffix(".json") {
            assert!(names.iter().any(|n| n == name), "{file} has no header");
        }
    }
}

#[test]
fn index_names_the_first_class_of_each_fixture() {
    let index = String::from_utf8(read("INDEX.txt")).unwrap();
    let mut checked = 0;
    for line in index.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split(" | ").collect();
        let [name, _, class, _] = cols[..] else {
            continue;
        };
        if name.ends_with(".frames") {
            continue;
        }
        let envelope = Envelope::parse(&read(&format!("{name}.json"))).unwrap();
        assert_eq!(envelope.items[0].class.as_str(), class, "{name}");
        checked += 1;
    }
    assert_eq!(checked, fixture_names().len());
}

#[test]
fn large_start_command_frames_match_the_recording() {
    let frames = recorded_frames();
    assert_eq!(frames.len(), 3);
    let wire: Vec<u8> = frames.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(wire.len(), 41_827);
    let chunks = frame::split_plaintext(&wire);
    assert_eq!(chunks.len(), frames.len());
    for ((chunk, more), (recorded_header, plaintext)) in chunks.iter().zip(&frames) {
        assert_eq!(*chunk, &plaintext[..]);
        let header = FrameHeader::new(chunk.len() + TLS12_GCM_OVERHEAD, *more).unwrap();
        assert_eq!(header.encode()[..], recorded_header[..]);
        assert_eq!(FrameHeader::decode(recorded_header).unwrap(), header);
    }
}

#[test]
fn large_start_command_reassembles_and_inflates() {
    let mut reassembler = Reassembler::default();
    let mut message = None;
    for (header, plaintext) in recorded_frames() {
        let header = FrameHeader::decode(&header).unwrap();
        assert!(message.is_none(), "message ended before the last frame");
        message = reassembler.push(&plaintext, header.more()).unwrap();
    }
    let (header, json) = message::decode_raw(&message.unwrap()).unwrap();
    assert!(header.is_compressed());
    assert_eq!(json, read("StartCommand-large.json"));
}

#[test]
fn answers_echo_their_requests() {
    let mut by_seq: BTreeMap<i64, Vec<Header>> = BTreeMap::new();
    for name in fixture_names() {
        let header = Header::decode(&read_hex(&format!("{name}.hdr.hex"))).unwrap();
        by_seq.entry(header.seq.0).or_default().push(header);
    }
    let mut pairs = 0;
    for headers in by_seq.values() {
        let (requests, answers): (Vec<&Header>, Vec<&Header>) =
            headers.iter().partition(|h| h.is_request());
        for answer in answers {
            for request in &requests {
                let mut expected = request.answer();
                // The MS puts its own id in answers to the agent's requests.
                expected.mgmt_id = answer.mgmt_id;
                expected.size = answer.size;
                assert_eq!(&expected, answer, "answer to {request:?}");
                pairs += 1;
            }
        }
    }
    assert!(pairs >= 25, "only {pairs} request/answer pairs");
}

#[test]
fn fixture_bodies_are_ascii() {
    for name in fixture_names() {
        let json = read(&format!("{name}.json"));
        let written = Envelope::parse(&json).unwrap().to_json().unwrap();
        assert!(written.is_ascii(), "{name}");
    }
}

#[test]
fn large_message_survives_our_own_frame_pipeline() {
    let hdr = read_hex("StartCommand-large.hdr.hex");
    let json = read("StartCommand-large.json");
    let message = Message::new(
        Header::decode(&hdr).unwrap(),
        Envelope::parse(&json).unwrap(),
    );
    let wire = frame::frame_plaintext(&message.encode().unwrap()).unwrap();
    let mut decoder = frame::FrameDecoder::new();
    let mut reassembler = Reassembler::default();
    let mut received = Vec::new();
    // Feed the stream in odd-sized pieces, as a socket would deliver it.
    for piece in wire.chunks(1_000) {
        decoder.extend(piece);
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let Some(whole) = reassembler.push(&frame.data, frame.more).unwrap() {
                received.push(Message::decode(&whole).unwrap());
            }
        }
    }
    assert_eq!(received, vec![message]);
    assert_eq!(received[0].body.to_json().unwrap(), json);
}

#[test]
fn nested_transfer_objects_are_reachable() {
    let json = read("CopyCommand-template-to-primary.json");
    let envelope = Envelope::parse(&json).unwrap();
    let copy = &envelope.items[0];
    assert_eq!(copy.class.simple_name(), "CopyCommand");
    let template = copy.nested("srcTO").unwrap().unwrap();
    assert_eq!(
        template.class.as_str(),
        "org.apache.cloudstack.storage.to.TemplateObjectTO"
    );
    let store = template.nested("imageDataStore").unwrap().unwrap();
    assert_eq!(store.class.as_str(), "com.cloud.agent.api.to.NfsTO");
    assert_eq!(store.fields["_role"], "Image");
    let dest = copy.nested("destTO").unwrap().unwrap();
    assert!(dest.class.as_str().ends_with("TemplateObjectTO"));
}

#[test]
fn html_sensitive_characters_come_back_escaped() {
    let json = read("StartCommand.json");
    let written = Envelope::parse(&json).unwrap().to_json().unwrap();
    let text = String::from_utf8(written).unwrap();
    assert!(text.contains("\\u003d") && text.contains("\\u0026"));
    assert!(!text.contains('=') && !text.contains('&'));
}
