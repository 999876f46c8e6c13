//! The host's guest defaults (`[guest]` in agent.toml): what StartVm puts in
//! a domain where the spec says nothing.
//!
//! Owns the reading of those keys into typed values (so a bad one stops the
//! agent at config load, naming the key) and the rule of where each applies:
//! the CPU mode, model and features only when the spec names neither a mode
//! nor a model; a random-number device and a watchdog only when the spec has
//! none; the balloon's statistics period only for a balloon whose period the
//! spec leaves unset (a spec without a balloon gets none). A spec always wins.
//! Must not: touch libvirt or the network; the spec is changed in memory.

use csagent_domain::{
    Balloon, Cpu, CpuFeature, CpuMode, FeaturePolicy, Rng, VmSpec, Watchdog, WatchdogAction,
    WatchdogModel,
};

/// The entropy source of a default random-number device.
const RNG_BACKEND: &str = "/dev/urandom";

/// Typed `[guest]` defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestDefaults {
    /// Mode and model of the host's guest CPU; None leaves it to libvirt.
    cpu: Option<(CpuMode, Option<String>)>,
    cpu_features: Vec<String>,
    balloon_period_secs: Option<u32>,
    rng: bool,
    watchdog: Option<Watchdog>,
    /// Volumes made from templates without a clone mode are full copies.
    pub full_clone: bool,
}

/// The raw `[guest]` values, as the config holds them.
pub struct GuestKeys<'a> {
    pub cpu_mode: &'a str,
    pub cpu_model: &'a str,
    pub cpu_features: &'a [String],
    pub memballoon_stats_period_secs: u32,
    pub rng_enable: bool,
    pub watchdog_model: &'a str,
    pub watchdog_action: &'a str,
    pub create_full_clone: bool,
}

/// A bad key: its name under `[guest]` and why.
pub type KeyError = (&'static str, String);

impl GuestDefaults {
    pub fn parse(k: &GuestKeys<'_>) -> Result<GuestDefaults, KeyError> {
        Ok(GuestDefaults {
            cpu: cpu(k.cpu_mode, k.cpu_model)?,
            cpu_features: features(k.cpu_features, k.cpu_mode)?,
            balloon_period_secs: (k.memballoon_stats_period_secs > 0)
                .then_some(k.memballoon_stats_period_secs),
            rng: k.rng_enable,
            watchdog: watchdog(k.watchdog_model, k.watchdog_action)?,
            full_clone: k.create_full_clone,
        })
    }

    /// Fills what `spec` leaves unsaid with the host's defaults.
    pub fn apply(&self, spec: &mut VmSpec) {
        self.apply_cpu(spec);
        let d = &mut spec.devices;
        if self.rng && d.rng.is_none() {
            d.rng = Some(Rng {
                backend: RNG_BACKEND.into(),
                rate: None,
            });
        }
        if d.watchdog.is_none() {
            d.watchdog = self.watchdog;
        }
        if let Some(Balloon { stats_period }) = d.balloon.as_mut() {
            if stats_period.is_none() {
                *stats_period = self.balloon_period_secs;
            }
        }
    }

    fn apply_cpu(&self, spec: &mut VmSpec) {
        let Some((mode, model)) = &self.cpu else {
            return;
        };
        let cpu = spec.cpu.get_or_insert_with(Cpu::default);
        if cpu.mode.is_some() || cpu.model.is_some() {
            return;
        }
        cpu.mode = Some(*mode);
        cpu.model = model.clone();
        if cpu.features.is_empty() {
            cpu.features = self
                .cpu_features
                .iter()
                .map(|name| CpuFeature {
                    name: name.clone(),
                    policy: FeaturePolicy::Require,
                })
                .collect();
        }
    }
}

fn cpu(mode: &str, model: &str) -> Result<Option<(CpuMode, Option<String>)>, KeyError> {
    if mode.is_empty() {
        return match model.is_empty() {
            true => Ok(None),
            false => Err(("guest.cpu_model", "needs cpu_mode = \"custom\"".into())),
        };
    }
    let m = CpuMode::from_str(mode).ok_or_else(|| {
        let all = CpuMode::ALL.join(", ");
        (
            "guest.cpu_mode",
            format!("{mode:?} is not one of {all} or empty"),
        )
    })?;
    match (m, model.is_empty()) {
        (CpuMode::Custom, true) => Err((
            "guest.cpu_model",
            "cpu_mode \"custom\" needs a model (e.g. \"Skylake-Server\")".into(),
        )),
        (CpuMode::Custom, false) => Ok(Some((m, Some(name("guest.cpu_model", model)?)))),
        (_, true) => Ok(Some((m, None))),
        (_, false) => Err((
            "guest.cpu_model",
            format!("is only for cpu_mode \"custom\", not {mode:?}"),
        )),
    }
}

fn features(list: &[String], mode: &str) -> Result<Vec<String>, KeyError> {
    if !list.is_empty() && mode.is_empty() {
        return Err(("guest.cpu_features", "need a cpu_mode".into()));
    }
    list.iter().map(|f| name("guest.cpu_features", f)).collect()
}

/// A CPU model or feature name as libvirt spells them.
fn name(key: &'static str, s: &str) -> Result<String, KeyError> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err((key, format!("{s:?} is not a CPU model or feature name")))
    }
}

fn watchdog(model: &str, action: &str) -> Result<Option<Watchdog>, KeyError> {
    if model.is_empty() {
        return Ok(None);
    }
    let model = WatchdogModel::from_str(model).ok_or_else(|| {
        let all = WatchdogModel::ALL.join(", ");
        (
            "guest.watchdog_model",
            format!("{model:?} is not one of {all} or empty"),
        )
    })?;
    let action = match action {
        "" => WatchdogAction::None,
        a => WatchdogAction::from_str(a).ok_or_else(|| {
            let all = WatchdogAction::ALL.join(", ");
            (
                "guest.watchdog_action",
                format!("{a:?} is not one of {all}"),
            )
        })?,
    };
    Ok(Some(Watchdog { model, action }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> GuestKeys<'static> {
        GuestKeys {
            cpu_mode: "",
            cpu_model: "",
            cpu_features: &[],
            memballoon_stats_period_secs: 0,
            rng_enable: false,
            watchdog_model: "",
            watchdog_action: "",
            create_full_clone: false,
        }
    }

    /// A golden spec with no CPU, rng, watchdog or balloon of its own.
    fn spec() -> VmSpec {
        let json = include_str!("../../tests/golden/domain/kernel-boot.json");
        let p: csagent_proto::v1::VmSpec = serde_json::from_str(json).unwrap();
        let mut s = crate::convert::domain::spec_from_proto(&p).unwrap();
        s.cpu = None;
        (s.devices.rng, s.devices.watchdog, s.devices.balloon) = (None, None, None);
        s
    }

    #[test]
    fn nothing_configured_changes_nothing() {
        let mut s = spec();
        GuestDefaults::parse(&keys()).unwrap().apply(&mut s);
        assert_eq!(s, spec());
    }

    #[test]
    fn defaults_fill_only_what_the_spec_leaves_unsaid() {
        let features = ["pcid".to_string()];
        let d = GuestDefaults::parse(&GuestKeys {
            cpu_mode: "custom",
            cpu_model: "Westmere",
            cpu_features: &features,
            memballoon_stats_period_secs: 10,
            rng_enable: true,
            watchdog_model: "i6300esb",
            watchdog_action: "reset",
            ..keys()
        })
        .unwrap();
        let mut s = spec();
        s.devices.balloon = Some(Balloon { stats_period: None });
        d.apply(&mut s);
        let cpu = s.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.mode, cpu.model.as_deref()),
            (Some(CpuMode::Custom), Some("Westmere"))
        );
        assert_eq!(cpu.features[0].name, "pcid");
        assert_eq!(s.devices.rng.as_ref().unwrap().backend, RNG_BACKEND);
        assert_eq!(s.devices.watchdog.unwrap().action, WatchdogAction::Reset);
        assert_eq!(s.devices.balloon.unwrap().stats_period, Some(10));

        // A spec that says something keeps it.
        let mut own = spec();
        own.cpu = Some(Cpu {
            mode: Some(CpuMode::HostPassthrough),
            ..Default::default()
        });
        own.devices.watchdog = Some(Watchdog {
            model: WatchdogModel::Itco,
            action: WatchdogAction::Pause,
        });
        own.devices.balloon = Some(Balloon {
            stats_period: Some(3),
        });
        let before = own.clone();
        d.apply(&mut own);
        assert_eq!(own.cpu, before.cpu);
        assert_eq!(own.devices.watchdog, before.devices.watchdog);
        assert_eq!(own.devices.balloon, before.devices.balloon);
        // No balloon in the spec: the period adds none.
        assert!(spec().devices.balloon.is_none());
    }

    #[test]
    fn bad_keys_are_named() {
        let bad = |k: GuestKeys<'_>| GuestDefaults::parse(&k).unwrap_err().0;
        assert_eq!(
            bad(GuestKeys {
                cpu_mode: "fast",
                ..keys()
            }),
            "guest.cpu_mode"
        );
        assert_eq!(
            bad(GuestKeys {
                cpu_mode: "custom",
                ..keys()
            }),
            "guest.cpu_model"
        );
        assert_eq!(
            bad(GuestKeys {
                cpu_model: "Westmere",
                ..keys()
            }),
            "guest.cpu_model"
        );
        let f = ["a b".to_string()];
        let with = GuestKeys {
            cpu_mode: "host-model",
            cpu_features: &f,
            ..keys()
        };
        assert_eq!(bad(with), "guest.cpu_features");
        assert_eq!(
            bad(GuestKeys {
                watchdog_model: "x",
                ..keys()
            }),
            "guest.watchdog_model"
        );
        let act = GuestKeys {
            watchdog_model: "ib700",
            watchdog_action: "boom",
            ..keys()
        };
        assert_eq!(bad(act), "guest.watchdog_action");
    }
}
