//! Fuzz target: the domain XML parser must never panic, whatever the bytes.
//!
//! Input is arbitrary bytes; non-UTF-8 input is read lossily (the agent only
//! ever sees libvirt's UTF-8 strings, but the parser must not care). A parse
//! that succeeds must also survive re-rendering when the model validates.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let xml = String::from_utf8_lossy(data);
    let _ = csagent_domain::is_managed(&xml);
    let _ = csagent_domain::metadata(&xml);
    if let Ok(parsed) = csagent_domain::parse(&xml) {
        // Rendering validates first; a valid model must render and re-parse.
        if let Ok(out) = csagent_domain::render(&parsed.spec) {
            let again = csagent_domain::parse(&out).map(|p| p.spec);
            assert_eq!(again.ok().as_ref(), Some(&parsed.spec), "render/parse of a fuzzed model drifted");
        }
    }
});
