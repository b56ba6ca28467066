//! Chat templates: the Jinja template of tokenizer_config.json (or chat_template.jinja),
//! rendered with minijinja the way transformers' `apply_chat_template(..., tokenize=False,
//! add_generation_prompt=True)` renders it: trim_blocks + lstrip_blocks, Python string methods
//! (minijinja-contrib's pycompat), `raise_exception`, `strftime_now`, and a `tojson` that
//! prints like Python's `json.dumps`.

use crate::store::files::read_small;
use std::path::Path;

use minijinja::value::Value as JValue;
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use serde_json::Value;

use super::EngineError;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
}

/// Python's `json.dumps` spacing (", " and ": "; with `indent`, newlines and that indent).
fn python_json(value: &JValue, indent: Option<usize>) -> Result<String, Error> {
    let v: Value = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(match indent {
        Some(n) => {
            let pad = " ".repeat(n);
            let mut out = Vec::new();
            let f = serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut out, f);
            v.serialize(&mut ser)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8(out).unwrap_or_default()
        }
        None => compact_python(&v),
    })
}

fn compact_python(v: &Value) -> String {
    match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(compact_python).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), compact_python(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python's `strftime` for the codes chat templates use (%d %m %Y %y %b %B %a %A %H %M %S %%),
/// at `offset` seconds east of UTC.
fn strftime(fmt: &str, t: std::time::SystemTime, offset: i64) -> String {
    let utc = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = utc.saturating_add_signed(offset);
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = WEEKDAYS[(days + 3).rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Seconds east of UTC of the local time zone at `t` (0 where it cannot be known).
fn local_utc_offset(t: std::time::SystemTime) -> i64 {
    #[cfg(unix)]
    {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let Ok(time) = libc::time_t::try_from(secs) else {
            return 0;
        };
        // SAFETY: `tm` is plain data that localtime_r fills; both pointers are valid for the
        // call, and the reentrant variant shares no static buffer.
        unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&time, &mut tm).is_null() {
                return 0;
            }
            tm.tm_gmtoff
        }
    }
    #[cfg(not(unix))]
    {
        let _ = t;
        0
    }
}

impl ChatTemplate {
    /// The model's template, if it has one.
    pub fn load(dir: &Path, tokenizer_config: &Value) -> Result<Option<ChatTemplate>, EngineError> {
        let from_file = read_small(&dir.join("chat_template.jinja"), 1 << 20, &mut 0)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let source = from_file.or_else(|| match tokenizer_config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        });
        source
            .map(|s| ChatTemplate::new(s).map_err(|e| EngineError::Template(e.to_string())))
            .transpose()
    }

    pub fn new(source: String) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<JValue, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        // transformers' `strftime_now` is `datetime.now().strftime`: the local time.
        env.add_function("strftime_now", |fmt: String| -> String {
            let now = std::time::SystemTime::now();
            strftime(&fmt, now, local_utc_offset(now))
        });
        env.add_filter(
            "tojson",
            |v: JValue, kwargs: minijinja::value::Kwargs| -> Result<String, Error> {
                let indent: Option<usize> = kwargs.get("indent")?;
                kwargs.assert_all_used()?;
                python_json(&v, indent)
            },
        );
        env.add_template_owned("chat", source)?;
        Ok(ChatTemplate { env })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opening.
    pub fn render(
        &self,
        messages: &[Message],
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String, EngineError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
        })
        .map_err(|e| EngineError::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_like_python() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_722_000_309);
        assert_eq!(strftime("%d %b %Y", t, 0), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %d, %y %H:%M:%S %%", t, 0),
            "Friday July 26, 24 13:25:09 %"
        );
        // Eleven hours east it is already the next day.
        assert_eq!(strftime("%a %d %H", t, 11 * 3600), "Sat 27 00");
        assert_eq!(strftime("%d %H", t, -14 * 3600), "25 23");
    }

    #[test]
    fn tojson_prints_like_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'a': [1, 'é'], 'b': {'c': none}} | tojson }}|{{ [1] | tojson(indent=2) }}".into(),
        )
        .unwrap();
        let out = t.render(&[], None, None).unwrap();
        assert_eq!(out, "{\"a\": [1, \"é\"], \"b\": {\"c\": null}}|[\n  1\n]");
    }
}
