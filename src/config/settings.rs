//! Every setting by name: the keys `config/binderd.toml` documents (it is
//! built in, so the list and the documented file cannot drift apart), each
//! settable in the file, by a `BINDERD_*` variable (the key upper-cased,
//! `.` as `_`: `rate_limit.anonymous_per_minute` is
//! `BINDERD_RATE_LIMIT_ANONYMOUS_PER_MINUTE`) and by `--set key=value`.
//! Precedence: flag > environment > file > built-in default. [`Layered`]
//! is the settings laid over each other, with where each came from, which
//! `binderd config show` prints.
//!
//! In the documented file an uncommented `key = value` is the built-in
//! default; a commented one is an example of a key unset by default.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use toml::{Table, Value};

use super::ConfigError;

/// The documented file, built in.
const DOCUMENTED: &str = include_str!("../../config/binderd.toml");

/// Keys still read that the documented file no longer shows (no variable).
const OLD_KEYS: &[&str] = &["docker_network"];

/// Arrays of tables that are not settings one by one.
const LISTS: &[&str] = &["api_keys", "bindings"];

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File,
    Env,
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::File => "file",
            Origin::Env => "env",
            Origin::Flag => "flag",
        })
    }
}

/// One documented key.
#[derive(Debug)]
pub struct Setting {
    /// `listen`, `rate_limit.anonymous_per_minute`.
    pub key: String,
    /// `BINDERD_...` (none for an old spelling).
    pub env: Option<String>,
    /// Its documented value is a string: a variable's or flag's text is
    /// taken as it is (`replica = "123"` stays a string).
    pub string: bool,
    /// The built-in default, where the file shows one uncommented.
    pub default: Option<Value>,
}

impl Setting {
    /// Keys whose values are secrets: never printed.
    pub fn secret(&self) -> bool {
        let last = self.key.rsplit('.').next().unwrap_or("");
        ["key", "token", "secret", "password"]
            .iter()
            .any(|s| last.contains(s))
    }
}

/// Every documented key, in the file's order.
pub fn known() -> &'static [Setting] {
    static KNOWN: OnceLock<Vec<Setting>> = OnceLock::new();
    KNOWN.get_or_init(|| documented(DOCUMENTED))
}

fn find(key: &str) -> Option<&'static Setting> {
    known().iter().find(|s| s.key == key)
}

/// The `key = value` lines of a documented file, commented or not, by
/// section (`[[...]]` lists are not settings).
fn documented(text: &str) -> Vec<Setting> {
    let mut out: Vec<Setting> = Vec::new();
    let mut section: Option<String> = None;
    let mut in_list = false;
    for line in text.lines() {
        let trimmed = line.trim();
        let (commented, body) = match trimmed.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        if let Some(head) = body.strip_prefix('[') {
            let name = head.split(']').next().unwrap_or("");
            in_list = name.starts_with('[');
            section = Some(name.to_owned());
            continue;
        }
        let Some((name, _)) = body.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if in_list || !plain {
            continue;
        }
        let Ok(mut parsed) = toml::from_str::<Table>(body) else {
            continue;
        };
        let value = parsed.remove(name);
        let key = match &section {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        };
        if out.iter().any(|s| s.key == key) {
            continue;
        }
        out.push(Setting {
            env: Some(format!("BINDERD_{}", key.replace('.', "_").to_uppercase())),
            string: value.as_ref().is_some_and(Value::is_str),
            default: value.filter(|_| !commented),
            key,
        });
    }
    for old in OLD_KEYS {
        out.push(Setting {
            key: (*old).to_owned(),
            env: None,
            string: true,
            default: None,
        });
    }
    out
}

/// The known key nearest to an unknown one, for its error.
fn nearest(key: &str) -> Option<&'static str> {
    known()
        .iter()
        .map(|s| (strsim::levenshtein(key, &s.key), s.key.as_str()))
        .min()
        .filter(|(d, _)| *d <= key.len().max(4) / 2)
        .map(|(_, k)| k)
}

fn unknown(key: &str) -> ConfigError {
    let hint = match nearest(key) {
        Some(k) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    };
    ConfigError::Invalid(format!(
        "unknown setting `{}`{hint}",
        crate::text::printable(key)
    ))
}

/// A variable's or flag's text as the setting's value: a string setting's
/// as it is, another's as TOML (`0`, `true`, `["a", "b"]`), else as text.
fn value_of(setting: &Setting, raw: &str) -> Value {
    if setting.string {
        return Value::String(raw.to_owned());
    }
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// The settings laid over each other, and where each came from.
#[derive(Debug, Default)]
pub struct Layered {
    pub table: Table,
    pub origins: BTreeMap<String, Origin>,
}

impl Layered {
    /// The file's table: every key in it must be known.
    pub fn from_file(table: Table) -> Result<Layered, ConfigError> {
        let mut origins = BTreeMap::new();
        for (name, value) in &table {
            if LISTS.contains(&name.as_str()) {
                origins.insert(name.clone(), Origin::File);
                continue;
            }
            let section = known()
                .iter()
                .any(|s| s.key.starts_with(&format!("{name}.")));
            match value {
                Value::Table(inner) if section => {
                    for sub in inner.keys() {
                        let key = format!("{name}.{sub}");
                        find(&key).ok_or_else(|| unknown(&key))?;
                        origins.insert(key, Origin::File);
                    }
                }
                _ => {
                    find(name).ok_or_else(|| unknown(name))?;
                    origins.insert(name.clone(), Origin::File);
                }
            }
        }
        Ok(Layered { table, origins })
    }

    /// Each documented key's variable, where `var` has it.
    pub fn env(&mut self, var: impl Fn(&str) -> Option<String>) {
        for setting in known() {
            let Some(name) = &setting.env else { continue };
            if let Some(raw) = var(name) {
                self.put(setting, value_of(setting, &raw), Origin::Env);
            }
        }
    }

    /// `--set key=value` flags.
    pub fn flags(&mut self, sets: &[String]) -> Result<(), ConfigError> {
        for set in sets {
            let Some((key, raw)) = set.split_once('=') else {
                return Err(ConfigError::Invalid(format!(
                    "--set {}: expected key=value",
                    crate::text::printable(set)
                )));
            };
            let setting = find(key.trim()).ok_or_else(|| unknown(key.trim()))?;
            self.put(setting, value_of(setting, raw.trim()), Origin::Flag);
        }
        Ok(())
    }

    fn put(&mut self, setting: &Setting, value: Value, origin: Origin) {
        let mut parts: Vec<&str> = setting.key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut table = &mut self.table;
        for part in parts {
            let slot = table
                .entry(part.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            if !slot.is_table() {
                *slot = Value::Table(Table::new());
            }
            table = slot.as_table_mut().expect("made a table");
        }
        table.insert(last.to_owned(), value);
        self.origins.insert(setting.key.clone(), origin);
    }

    /// Where `key` came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).copied().unwrap_or(Origin::Default)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        let mut parts = key.split('.');
        let mut value = self.table.get(parts.next()?)?;
        for part in parts {
            value = value.as_table()?.get(part)?;
        }
        Some(value)
    }

    /// `binderd config show`: every setting, its value and where it came
    /// from, secrets masked; `keys` says how many API keys there are and
    /// from where.
    pub fn show(&self, keys: (usize, Origin), bindings: usize) -> String {
        let mut out = String::new();
        let width = known().iter().map(|s| s.key.len()).max().unwrap_or(0);
        for setting in known() {
            let origin = self.origin(&setting.key);
            let value = match (self.get(&setting.key), &setting.default) {
                (Some(_), _) if setting.secret() => "********".to_owned(),
                (Some(v), _) => v.to_string(),
                (None, Some(d)) => d.to_string(),
                (None, None) => "(unset)".to_owned(),
            };
            // TOML's own spelling: a string's control characters escaped.
            out.push_str(&format!("{:width$} = {value}  # {origin}\n", setting.key));
        }
        out.push_str(&format!(
            "{:width$} = {} keys, secrets not shown  # {}\n",
            "api_keys", keys.0, keys.1
        ));
        out.push_str(&format!("{:width$} = {bindings} bindings\n", "bindings"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_names_each_key_once_with_its_variable() {
        let keys: Vec<&str> = known().iter().map(|s| s.key.as_str()).collect();
        for k in [
            "listen",
            "rate_limit.anonymous_per_minute",
            "content.allow_local",
            "kubernetes.pod_template",
            "process.uid_range",
            "docker_network",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.starts_with("api_keys")), "{keys:?}");
        let mut envs: Vec<&str> = known().iter().filter_map(|s| s.env.as_deref()).collect();
        let n = envs.len();
        envs.sort();
        envs.dedup();
        assert_eq!(envs.len(), n, "two keys share a variable");
        let limit = find("rate_limit.anonymous_per_minute").unwrap();
        assert_eq!(
            limit.env.as_deref(),
            Some("BINDERD_RATE_LIMIT_ANONYMOUS_PER_MINUTE")
        );
        assert_eq!(limit.default, Some(Value::Integer(60)));
        assert!(find("public_url").unwrap().default.is_none(), "an example");
    }

    /// The names serde expects where `table` has an unknown key.
    fn expected(section: Option<&str>) -> Vec<String> {
        let text = match section {
            Some(s) => format!("[{s}]\nzz_unknown = 1\n"),
            None => "zz_unknown = 1\n".to_owned(),
        };
        let e = toml::from_str::<super::super::file::FileConfig>(&text)
            .expect_err("unknown keys are refused")
            .to_string();
        let list = e.split("expected").nth(1).unwrap_or_else(|| panic!("{e}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(|s| match section {
                Some(sec) => format!("{sec}.{s}"),
                None => s.to_owned(),
            })
            .collect()
    }

    /// Every key binderd reads is in the documented file (so it has a
    /// variable, a `--set`, and a line in `config show`), and nothing the
    /// file shows is a key binderd does not read.
    #[test]
    fn the_documented_file_is_every_key_binderd_reads() {
        let sections = [
            "rate_limit",
            "docker",
            "kubernetes",
            "process",
            "limits",
            "content",
            "security",
        ];
        let mut read: Vec<String> = expected(None)
            .into_iter()
            .filter(|k| !sections.contains(&k.as_str()) && !LISTS.contains(&k.as_str()))
            .collect();
        for s in sections {
            read.extend(expected(Some(s)));
        }
        let documented: Vec<&str> = known().iter().map(|s| s.key.as_str()).collect();
        let missing: Vec<&String> = read
            .iter()
            .filter(|k| !documented.contains(&k.as_str()))
            .collect();
        let extra: Vec<&&str> = documented
            .iter()
            .filter(|k| !read.iter().any(|r| r == **k))
            .collect();
        assert!(
            missing.is_empty(),
            "read but not in config/binderd.toml: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "in config/binderd.toml but not read: {extra:?}"
        );
        assert!(read.len() > 40, "{read:?}");
    }

    /// The file's uncommented values are the built-in defaults: binderd
    /// with the documented file is binderd with no file.
    #[test]
    fn the_documented_defaults_are_the_built_in_ones() {
        let documented: super::super::file::FileConfig = toml::from_str(DOCUMENTED).unwrap();
        let with = super::super::Config::check(documented, None).unwrap();
        let without = super::super::Config::check(Default::default(), None).unwrap();
        assert_eq!(format!("{with:?}"), format!("{without:?}"));
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let file: Table =
            toml::from_str("listen = \"127.0.0.1:1\"\n[rate_limit]\nglobal_burst = 5\n").unwrap();
        let mut l = Layered::from_file(file).unwrap();
        l.env(|name| match name {
            "BINDERD_LISTEN" => Some("127.0.0.1:2".into()),
            "BINDERD_RATE_LIMIT_ANONYMOUS_PER_MINUTE" => Some("0".into()),
            "BINDERD_KUBERNETES_REPLICA" => Some("123".into()),
            _ => None,
        });
        l.flags(&["listen=127.0.0.1:3".into()]).unwrap();
        assert_eq!(l.table["listen"].as_str(), Some("127.0.0.1:3"));
        assert_eq!(l.origin("listen"), Origin::Flag);
        let rl = l.table["rate_limit"].as_table().unwrap();
        assert_eq!(rl["anonymous_per_minute"].as_integer(), Some(0));
        assert_eq!(rl["global_burst"].as_integer(), Some(5));
        assert_eq!(l.origin("rate_limit.global_burst"), Origin::File);
        assert_eq!(l.origin("rate_limit.anonymous_per_minute"), Origin::Env);
        assert_eq!(l.origin("http2"), Origin::Default);
        assert_eq!(
            l.table["kubernetes"]["replica"].as_str(),
            Some("123"),
            "a string setting stays a string"
        );
    }

    /// A variable and a `--set` reach the checked config like the file's
    /// keys do.
    #[test]
    fn variables_and_flags_reach_the_checked_config() {
        let var = |name: &str| (name == "BINDERD_MAX_BODY_BYTES").then(|| "10".to_owned());
        let sets = [
            "content.allow_local=true".to_owned(),
            "kubernetes.replica=7".to_owned(),
        ];
        let file = super::super::file::FileConfig::read(None, var, &sets).unwrap();
        let cfg = super::super::Config::check(file, None).unwrap();
        assert_eq!(cfg.max_body_bytes, 10);
        assert!(cfg.content.allow_local);
        assert_eq!(cfg.kubernetes.replica.as_deref(), Some("7"));
        let bad = ["http2=maybe".to_owned()];
        let e = super::super::file::FileConfig::read(None, |_| None, &bad).unwrap_err();
        assert!(e.to_string().contains("http2"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_nearest_known_one() {
        let file: Table = toml::from_str("[rate_limit]\nanonymus_per_minute = 1\n").unwrap();
        let e = Layered::from_file(file).unwrap_err().to_string();
        assert!(
            e.contains("`rate_limit.anonymus_per_minute`")
                && e.contains("did you mean `rate_limit.anonymous_per_minute`"),
            "{e}"
        );
        let mut l = Layered::default();
        let e = l.flags(&["lsten=1".into()]).unwrap_err().to_string();
        assert!(e.contains("did you mean `listen`"), "{e}");
        let e = l.flags(&["zzzzzzzzzzzz=1".into()]).unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert!(l.flags(&["listen".into()]).is_err());
    }

    #[test]
    fn show_masks_secrets_and_says_where_each_came_from() {
        let mut l = Layered::default();
        l.flags(&["rate_limit.anonymous_per_minute=0".into()])
            .unwrap();
        let shown = l.show((2, Origin::Env), 3);
        assert!(
            shown
                .lines()
                .any(|s| s.starts_with("rate_limit.anonymous_per_minute ")
                    && s.ends_with(" = 0  # flag")),
            "{shown}"
        );
        assert!(shown.contains("(unset)  # default"), "{shown}");
        assert!(
            shown.contains("2 keys, secrets not shown  # env"),
            "{shown}"
        );
        let secret = Setting {
            key: "x.api_token".into(),
            env: None,
            string: true,
            default: None,
        };
        assert!(secret.secret());
    }
}
