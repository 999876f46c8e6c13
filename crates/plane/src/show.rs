//! What `csagent-mgmt` prints for a person, and the enum names it reads and
//! writes. serde's JSON of the wire types carries enums as numbers (`"state":2`),
//! which nobody can read; this module walks that JSON beside the proto's
//! descriptors and puts the value's name in place of each enum number
//! (`"state":"RUNNING"`), or back (`"mode":"LINKED"` to `"mode":1`), and renders
//! command updates and plane events as short lines. It never talks to a host.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};

use csagent_proto::v1 as pb;

/// Fully qualified names, as descriptors spell them.
pub const COMMAND: &str = ".csagent.v1.Command";
pub const COMMAND_UPDATE: &str = ".csagent.v1.CommandUpdate";
pub const PLANE_EVENT: &str = ".csagent.v1.PlaneEvent";
pub const HOST_SUMMARY: &str = ".csagent.v1.HostSummary";

struct Index {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut ix = Index {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        // Built into this binary by csagent-proto's build.rs: it decodes, or
        // the build is broken and no name is shown (numbers stay numbers).
        let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
        for file in set.file {
            let scope = format!(".{}", file.package());
            for e in file.enum_type {
                ix.enums.insert(format!("{scope}.{}", e.name()), e);
            }
            for m in file.message_type {
                add_message(&mut ix, &scope, m);
            }
        }
        ix
    })
}

fn add_message(ix: &mut Index, scope: &str, m: DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    for e in &m.enum_type {
        ix.enums.insert(format!("{name}.{}", e.name()), e.clone());
    }
    for n in &m.nested_type {
        add_message(ix, &name, n.clone());
    }
    ix.messages.insert(name, m);
}

/// `VmPowerState` -> `VM_POWER_STATE_`: the prefix protoc style puts on
/// every value, which a reader does not need.
fn value_prefix(enum_name: &str) -> String {
    let mut out = String::new();
    for (i, c) in enum_name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.push('_');
    out
}

/// The short name of `number` in enum `full` (`RUNNING`), if it has one.
fn enum_name(full: &str, number: i64) -> Option<String> {
    let e = index().enums.get(full)?;
    let v = e.value.iter().find(|v| i64::from(v.number()) == number)?;
    let prefix = value_prefix(e.name());
    Some(
        v.name()
            .strip_prefix(&prefix)
            .unwrap_or(v.name())
            .to_string(),
    )
}

/// The number of `name` in enum `full`: the short name, the full one
/// (`VM_POWER_STATE_RUNNING`) or either in lower case.
fn enum_number(full: &str, name: &str) -> Option<i64> {
    let e = index().enums.get(full)?;
    let prefix = value_prefix(e.name());
    let want = name.to_ascii_uppercase();
    e.value
        .iter()
        .find(|v| v.name() == want || v.name().strip_prefix(&prefix) == Some(want.as_str()))
        .map(|v| i64::from(v.number()))
}

#[derive(Clone, Copy)]
enum Way {
    ToNames,
    ToNumbers,
}

/// Rewrites the enum values in `v`, the serde JSON of message `message`.
fn walk(message: &str, v: &mut Value, way: Way) {
    let ix = index();
    let (Some(desc), Value::Object(obj)) = (ix.messages.get(message), v) else {
        return;
    };
    for f in &desc.field {
        // serde puts a oneof member under the oneof's name: {"update":{"result":{..}}}.
        let slot = match f.oneof_index.and_then(|i| desc.oneof_decl.get(i as usize)) {
            Some(o) if !f.proto3_optional() => match obj.get_mut(o.name()) {
                Some(Value::Object(inner)) => inner.get_mut(f.name()),
                _ => None,
            },
            _ => obj.get_mut(f.name()),
        };
        let Some(slot) = slot else { continue };
        let repeated = f.label() == Label::Repeated;
        let map_entry = ix
            .messages
            .get(f.type_name())
            .filter(|m| m.options.as_ref().is_some_and(|o| o.map_entry()));
        match (f.r#type(), map_entry) {
            (Type::Message, Some(entry)) => {
                // A map: rewrite its values by the entry's `value` field.
                let Some(value) = entry.field.iter().find(|f| f.name() == "value") else {
                    continue;
                };
                if let Value::Object(m) = slot {
                    for item in m.values_mut() {
                        one(value.r#type(), value.type_name(), item, way);
                    }
                }
            }
            (t, _) if repeated => {
                if let Value::Array(items) = slot {
                    for item in items {
                        one(t, f.type_name(), item, way);
                    }
                }
            }
            (t, _) => one(t, f.type_name(), slot, way),
        }
    }
}

fn one(t: Type, type_name: &str, v: &mut Value, way: Way) {
    match (t, way, &*v) {
        (Type::Message, ..) => walk(type_name, v, way),
        (Type::Enum, Way::ToNames, Value::Number(n)) => {
            if let Some(name) = n.as_i64().and_then(|n| enum_name(type_name, n)) {
                *v = Value::String(name);
            }
        }
        (Type::Enum, Way::ToNumbers, Value::String(s)) => {
            if let Some(n) = enum_number(type_name, s) {
                *v = Value::from(n);
            }
        }
        _ => {}
    }
}

/// `value` (serde's JSON of a wire message, type `message`) with every
/// enum number replaced by its name: `"status":"OK"`, `"error_code":"DEADLINE_EXCEEDED"`.
/// Numbers no name is known for stay numbers.
pub fn named<T: serde::Serialize>(message: &str, value: &T) -> serde_json::Result<Value> {
    let mut v = serde_json::to_value(value)?;
    walk(message, &mut v, Way::ToNames);
    Ok(v)
}

/// The inverse of [`named`]: enum names in `value` become their numbers,
/// so a person may write `"mode":"LINKED"` and serde reads the wire type.
pub fn numbered(message: &str, mut value: Value) -> Value {
    walk(message, &mut value, Way::ToNumbers);
    value
}

/// A `Command` body as an operator writes it (`{"echo":{"payload":"hi"}}`),
/// enum values by name or by number.
pub fn parse_body(json: &str) -> serde_json::Result<pb::command::Body> {
    let body: Value = serde_json::from_str(json)?;
    let mut wrapped = Value::Object(Map::from_iter([("body".to_string(), body)]));
    walk(COMMAND, &mut wrapped, Way::ToNumbers);
    let body = match wrapped {
        Value::Object(mut m) => m.remove("body").unwrap_or(Value::Null),
        other => other,
    };
    serde_json::from_value(body)
}

fn name_or_number(full: &str, v: i32) -> String {
    enum_name(full, i64::from(v)).unwrap_or_else(|| v.to_string())
}

fn status_name(v: i32) -> String {
    name_or_number(".csagent.v1.CommandStatus", v)
}

fn error_name(v: i32) -> String {
    name_or_number(".csagent.v1.ErrorCode", v)
}

fn power_name(v: i32) -> String {
    name_or_number(".csagent.v1.VmPowerState", v)
}

fn host_state_name(v: i32) -> String {
    name_or_number(".csagent.v1.HostState", v)
}

/// A scalar as a person reads it; anything bigger as one line of JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Leaves out what says nothing: empty strings and objects (an empty list
/// stays: "vms: []" is an answer).
fn says_something(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

fn event_text(e: &pb::Event) -> String {
    let vm = if e.vm_name.is_empty() {
        e.vm_uuid.clone()
    } else {
        format!("{} ({})", e.vm_name, e.vm_uuid)
    };
    let mut s = format!("{vm} {}", power_name(e.state));
    if !e.reason.is_empty() {
        let _ = write!(s, ", {}", e.reason);
    }
    s
}

fn result_lines(r: &pb::CommandResult) -> Vec<String> {
    let mut head = status_name(r.status);
    if r.status != pb::CommandStatus::Ok as i32 {
        let _ = write!(head, " {}", error_name(r.error_code));
    }
    let _ = write!(head, " in {} ms", r.elapsed_ms);
    if !r.message.is_empty() {
        let _ = write!(head, ": {}", r.message);
    }
    let mut lines = vec![format!("result    {head}")];
    // The payload (host facts, VM list, VNC port...) one field a line.
    if let Ok(Value::Object(mut v)) = named(".csagent.v1.CommandResult", r) {
        if let Some(Value::Object(payload)) = v.remove("result") {
            for (kind, body) in payload {
                lines.push(format!("  {kind}:"));
                match body {
                    Value::Object(fields) => {
                        for (k, val) in fields.iter().filter(|(_, v)| says_something(v)) {
                            lines.push(format!("    {k}: {}", plain(val)));
                        }
                    }
                    other => lines.push(format!("    {}", plain(&other))),
                }
            }
        }
    }
    lines
}

/// `csagent-mgmt send`'s lines for one update, for a person.
pub fn update_lines(u: &pb::CommandUpdate) -> Vec<String> {
    use pb::command_update::Update;
    match &u.update {
        Some(Update::AcceptedId(id)) => vec![format!("accepted  {id}")],
        Some(Update::Progress(p)) => {
            let mut s = format!("progress  {}", p.stage);
            if let Some(pct) = p.done.saturating_mul(100).checked_div(p.total) {
                let _ = write!(s, " {}/{} ({pct}%)", p.done, p.total);
            }
            vec![s]
        }
        Some(Update::Event(e)) => vec![format!("event     {}", event_text(e))],
        Some(Update::Result(r)) => result_lines(r),
        None => vec![],
    }
}

/// `csagent-mgmt events`' line for one plane event, for a person.
pub fn plane_event_line(e: &pb::PlaneEvent) -> String {
    use pb::plane_event::Event;
    let what = match &e.event {
        Some(Event::Vm(v)) => format!("vm {}", event_text(v)),
        Some(Event::HostState(s)) => format!("state {}", host_state_name(*s)),
        Some(Event::LateResult(r)) => {
            format!(
                "late result of {}: {}",
                r.command_id,
                result_lines(r).join(" ")
            )
        }
        Some(Event::Ha(a)) => ha_text(a),
        None => "(empty event)".to_string(),
    };
    format!("{} host {} {what}", clock(e.at_unix_ms), e.host_uuid)
}

fn ha_text(a: &pb::HaAction) -> String {
    use pb::ha_action::Kind;
    let kind = Kind::try_from(a.kind).unwrap_or_default();
    match kind {
        Kind::Host => format!("ha {}", a.message),
        Kind::Restarted => format!(
            "ha vm {} restarted on {}: {}",
            a.vm_uuid, a.to_host, a.message
        ),
        _ => format!(
            "ha vm {} {}: {}",
            a.vm_uuid,
            kind.as_str_name()
                .trim_start_matches("KIND_")
                .to_ascii_lowercase(),
            a.message
        ),
    }
}

/// UTC wall time of a Unix millisecond timestamp, `2024-05-01T12:00:00.250Z`.
fn clock(ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::command_update::Update;

    fn result(status: pb::CommandStatus, code: pb::ErrorCode, msg: &str) -> pb::CommandResult {
        pb::CommandResult {
            command_id: "c-1".into(),
            status: status as i32,
            error_code: code as i32,
            message: msg.into(),
            elapsed_ms: 301,
            ..Default::default()
        }
    }

    fn event(state: pb::VmPowerState) -> pb::CommandUpdate {
        pb::CommandUpdate {
            update: Some(Update::Event(pb::Event {
                vm_uuid: "0b0e4a4e-0000-4000-8000-000000000001".into(),
                vm_name: "web-1".into(),
                state: state as i32,
                reason: "booted".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn json_names_enum_values_and_reads_them_back() {
        let u = pb::CommandUpdate {
            update: Some(Update::Result(result(
                pb::CommandStatus::Error,
                pb::ErrorCode::DeadlineExceeded,
                "too slow",
            ))),
        };
        let v = named(COMMAND_UPDATE, &u).unwrap();
        let r = &v["update"]["result"];
        assert_eq!(r["status"], "ERROR", "{v}");
        assert_eq!(r["error_code"], "DEADLINE_EXCEEDED", "{v}");
        let back: pb::CommandUpdate = serde_json::from_value(numbered(COMMAND_UPDATE, v)).unwrap();
        assert_eq!(back, u);

        let v = named(COMMAND_UPDATE, &event(pb::VmPowerState::Running)).unwrap();
        assert_eq!(v["update"]["event"]["state"], "RUNNING", "{v}");
        let text = v.to_string();
        assert!(!text.contains("\"state\":2"), "{text}");
    }

    #[test]
    fn repeated_and_nested_enums_are_named() {
        let u = pb::CommandUpdate {
            update: Some(Update::Result(pb::CommandResult {
                status: pb::CommandStatus::Ok as i32,
                result: Some(pb::command_result::Result::VmList(pb::VmList {
                    vms: vec![pb::VmStatus {
                        name: "a".into(),
                        state: pb::VmPowerState::Stopped as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            })),
        };
        let v = named(COMMAND_UPDATE, &u).unwrap();
        assert_eq!(v["update"]["result"]["status"], "OK");
        assert_eq!(
            v["update"]["result"]["result"]["vm_list"]["vms"][0]["state"], "STOPPED",
            "{v}"
        );
        // A number no name is known for stays a number.
        let odd = pb::CommandUpdate {
            update: Some(Update::Event(pb::Event {
                state: 99,
                ..Default::default()
            })),
        };
        assert_eq!(
            named(COMMAND_UPDATE, &odd).unwrap()["update"]["event"]["state"],
            99
        );
    }

    #[test]
    fn a_body_takes_enum_names_or_numbers() {
        let by = |mode: &str| {
            parse_body(&format!(
                r#"{{"start_vm":{{"volumes":[{{"volume":{{"pool":"p","name":"v","template":"t","mode":{mode}}}}}]}}}}"#
            ))
        };
        let want = by("1").unwrap();
        for name in [r#""LINKED""#, r#""linked""#, r#""CLONE_MODE_LINKED""#] {
            assert_eq!(by(name).unwrap(), want, "{name}");
        }
        let pb::command::Body::StartVm(s) = want else {
            panic!("{want:?}")
        };
        assert_eq!(
            s.volumes[0].volume.as_ref().unwrap().mode,
            pb::CloneMode::Linked as i32
        );
        // A name that is no value of the enum is refused, not taken as 0.
        assert!(by(r#""SIDEWAYS""#).is_err());
        assert!(parse_body(r#"{"noop":{}}"#).is_ok());
    }

    #[test]
    fn human_lines_say_names_not_numbers() {
        let accepted = pb::CommandUpdate {
            update: Some(Update::AcceptedId("c-1".into())),
        };
        assert_eq!(update_lines(&accepted), vec!["accepted  c-1"]);
        let progress = pb::CommandUpdate {
            update: Some(Update::Progress(pb::CommandProgress {
                stage: "copy-template".into(),
                done: 1,
                total: 4,
                ..Default::default()
            })),
        };
        assert_eq!(
            update_lines(&progress),
            vec!["progress  copy-template 1/4 (25%)"]
        );
        assert_eq!(
            update_lines(&event(pb::VmPowerState::Running)),
            vec!["event     web-1 (0b0e4a4e-0000-4000-8000-000000000001) RUNNING, booted"]
        );
        let failed = pb::CommandUpdate {
            update: Some(Update::Result(result(
                pb::CommandStatus::Error,
                pb::ErrorCode::DeadlineExceeded,
                "echo: deadline of 300 ms passed",
            ))),
        };
        assert_eq!(
            update_lines(&failed),
            vec!["result    ERROR DEADLINE_EXCEEDED in 301 ms: echo: deadline of 300 ms passed"]
        );
        let ok = pb::CommandUpdate {
            update: Some(Update::Result(pb::CommandResult {
                status: pb::CommandStatus::Ok as i32,
                elapsed_ms: 7,
                result: Some(pb::command_result::Result::Echo(pb::EchoResult {
                    payload: "hi".into(),
                })),
                ..Default::default()
            })),
        };
        assert_eq!(
            update_lines(&ok),
            vec!["result    OK in 7 ms", "  echo:", "    payload: hi"]
        );
    }

    #[test]
    fn plane_events_read_as_lines() {
        let e = pb::PlaneEvent {
            host_uuid: "h-1".into(),
            at_unix_ms: 1_714_564_800_250,
            event: Some(pb::plane_event::Event::HostState(
                pb::HostState::Down as i32,
            )),
        };
        assert_eq!(
            plane_event_line(&e),
            "2024-05-01T12:00:00.250Z host h-1 state DOWN"
        );
        let v = named(PLANE_EVENT, &e).unwrap();
        assert_eq!(v["event"]["host_state"], "DOWN", "{v}");
    }
}
