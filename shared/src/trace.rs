//! W3C trace context: the `traceparent` a caller sends (or the api starts) travels with a job
//! through RabbitMQ (as a message header) to the worker and onto the gateway requests, so one
//! refresh can be followed across processes, and every log line of it carries its trace id.

use rand::Rng;
use std::fmt;

/// The header (HTTP) and message header (AMQP) the context travels in.
pub const HEADER: &str = "traceparent";

/// A trace's id and the id of the span that sent it on, with the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

/// Trace flag: the caller records this trace.
const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// A `traceparent` value, if it is one (W3C Trace Context, level 1): `00-` + 32 and 16
    /// lowercase hex digits, neither all zeros, + 2 of flags. A later version is read by its
    /// version-00 part, as the recommendation asks; `ff` is no version.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let version = value.get(..2)?;
        if version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 is exactly its fields; a later one may append more after a dash.
        let fields = value.get(..55)?;
        let rest = &value[55..];
        if (version == "00" && !rest.is_empty())
            || (version != "00" && !rest.is_empty() && !rest.starts_with('-'))
        {
            return None;
        }
        let mut parts = fields.split('-');
        let (_, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if trace_id.len() != 32 || parent_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if ![trace_id, parent_id, flags]
            .iter()
            .all(|part| is_lower_hex(part))
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
        let parent_id = u64::from_str_radix(parent_id, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, started here (recorded).
    pub fn root() -> TraceParent {
        TraceParent {
            trace_id: nonzero(|rng| rng.random()),
            parent_id: nonzero(|rng| rng.random()),
            flags: SAMPLED,
        }
    }

    /// The context a span of this trace sends on: the same trace and flags, its own span id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: nonzero(|rng| rng.random()),
            ..*self
        }
    }

    /// The trace id as the logs and `traceparent` write it.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A random id that is not zero (zero means "no id" in trace context).
fn nonzero<T: PartialEq + Default>(draw: impl Fn(&mut rand::rngs::ThreadRng) -> T) -> T {
    let mut rng = rand::rng();
    loop {
        let id = draw(&mut rng);
        if id != T::default() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendation_s_example_reads_and_writes_back() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parent.to_string(), EXAMPLE);
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child, parent);
        assert!(child.to_string().ends_with("-01"));
        let later = format!("01{}-future-field", &EXAMPLE[2..]);
        assert_eq!(
            TraceParent::parse(&later).unwrap().trace_id(),
            parent.trace_id()
        );
        let root = TraceParent::root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn anything_else_is_no_context() {
        for bad in [
            "",
            "00",
            &EXAMPLE.to_uppercase(),
            &EXAMPLE.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &EXAMPLE.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &EXAMPLE.replacen("00", "ff", 1),
            &format!("{EXAMPLE}-extra"),
            &EXAMPLE.replace('-', "_"),
            &EXAMPLE[..54],
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }
}
