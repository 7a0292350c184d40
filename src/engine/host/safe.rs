//! Replacements for the rhai built-ins whose result can be far larger than their arguments.
//! rhai checks a value's size only after the built-in has returned it, so
//! `s.replace("x", s)` on a 60,000-character string first builds a 3.6 GB string; these check
//! the size of the result before they allocate it. Registered functions take precedence over
//! rhai's packages, so scripts call these under the same names.
//!
//! Built-ins not replaced here either check before they allocate (`pad`, `blob`), or return at
//! most the sum of their arguments' sizes, which the engine's own limits already bound to twice
//! the largest value (`+`, `append`, `to_upper`, array `+`).

use super::guard::Guard;
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, INT};
use std::fmt::Write;
use std::sync::Arc;

type Res<T> = Result<T, Box<EvalAltResult>>;

fn too_large(what: &str, size: usize, limit: usize) -> Box<EvalAltResult> {
    format!(
        "stopped: {what} would hold {size} elements, above the sandbox's limit of {limit}; \
         nothing was allocated"
    )
    .into()
}

/// Length of `s` with every `find` replaced by `sub`, without building it.
fn replaced_len(s: &str, find: &str, sub_len: usize) -> usize {
    if find.is_empty() {
        // `str::replace` with an empty pattern inserts `sub` around every character.
        return s.len() + (s.chars().count() + 1) * sub_len;
    }
    let n = s.matches(find).count();
    s.len() - n * find.len() + n * sub_len
}

fn replace_checked(s: &mut ImmutableString, find: &str, sub: &str, max: usize) -> Res<()> {
    let len = replaced_len(s, find, sub.len());
    if len > max {
        return Err(too_large("the replaced string", len, max));
    }
    *s = s.replace(find, sub).into();
    Ok(())
}

/// Number of parts `split` would return (an empty delimiter splits around every character).
fn parts(s: &str, delimiter: &str) -> usize {
    if delimiter.is_empty() {
        s.chars().count() + 2
    } else {
        s.matches(delimiter).count() + 1
    }
}

fn split_checked(
    s: &str,
    delimiter: &str,
    limit: Option<INT>,
    rev: bool,
    max: usize,
) -> Res<Array> {
    let n = match limit {
        Some(k) => parts(s, delimiter).min(k.max(1) as usize),
        None => parts(s, delimiter),
    };
    if n > max {
        return Err(too_large("the split array", n, max));
    }
    let to_array = |it: &mut dyn Iterator<Item = &str>| -> Array {
        it.map(|p| Dynamic::from(p.to_string())).collect()
    };
    Ok(match (limit, rev) {
        (None, false) => to_array(&mut s.split(delimiter)),
        (None, true) => to_array(&mut s.rsplit(delimiter)),
        (Some(k), false) => to_array(&mut s.splitn(k.max(1) as usize, delimiter)),
        (Some(k), true) => to_array(&mut s.rsplitn(k.max(1) as usize, delimiter)),
    })
}

/// A `fmt::Write` that refuses to grow past `max` bytes.
struct Bounded {
    out: String,
    max: usize,
}

impl Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.out.len() + s.len() > self.max {
            return Err(std::fmt::Error);
        }
        self.out.push_str(s);
        Ok(())
    }
}

/// The text of an array or map as rhai prints it (elements in their debug form). Past `max`
/// bytes the call is stopped through the guard, at its next operation: rhai answers an error
/// from a formatting function by formatting the value itself, without any bound.
fn format_bounded(
    guard: &Guard,
    kind: &str,
    max: usize,
    write: impl FnOnce(&mut Bounded) -> std::fmt::Result,
) -> ImmutableString {
    let mut w = Bounded {
        out: String::new(),
        max,
    };
    match write(&mut w) {
        Ok(()) => w.out.into(),
        Err(_) => {
            guard.stop_with(format!(
                "stopped: the text of this {kind} would be longer than the sandbox's string \
                 limit of {max} bytes; print a part of it"
            ));
            ImmutableString::new()
        }
    }
}

fn write_array(w: &mut Bounded, a: &Array) -> std::fmt::Result {
    w.write_str("[")?;
    for (i, x) in a.iter().enumerate() {
        if i > 0 {
            w.write_str(", ")?;
        }
        write!(w, "{x:?}")?;
    }
    w.write_str("]")
}

fn write_map(w: &mut Bounded, m: &Map) -> std::fmt::Result {
    w.write_str("#{")?;
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            w.write_str(", ")?;
        }
        write!(w, "{k:?}: {v:?}")?;
    }
    w.write_str("}")
}

/// Registers the size-checked replacements; `max_string` and `max_array` are the engine's limits.
pub fn register(e: &mut Engine, guard: &Arc<Guard>, max_string: usize, max_array: usize) {
    let ms = max_string;
    e.register_fn(
        "replace",
        move |s: &mut ImmutableString, f: &str, r: &str| replace_checked(s, f, r, ms),
    );
    e.register_fn(
        "replace",
        move |s: &mut ImmutableString, f: &str, r: char| {
            replace_checked(s, f, r.encode_utf8(&mut [0; 4]), ms)
        },
    );
    e.register_fn(
        "replace",
        move |s: &mut ImmutableString, f: char, r: &str| {
            replace_checked(s, f.encode_utf8(&mut [0; 4]), r, ms)
        },
    );
    e.register_fn(
        "replace",
        move |s: &mut ImmutableString, f: char, r: char| {
            replace_checked(
                s,
                f.encode_utf8(&mut [0; 4]),
                r.encode_utf8(&mut [0; 4]),
                ms,
            )
        },
    );

    let ma = max_array;
    e.register_fn("split", move |s: &mut ImmutableString, d: &str| {
        split_checked(s, d, None, false, ma)
    });
    e.register_fn("split", move |s: &mut ImmutableString, d: char| {
        split_checked(s, d.encode_utf8(&mut [0; 4]), None, false, ma)
    });
    e.register_fn("split", move |s: &mut ImmutableString, d: &str, n: INT| {
        split_checked(s, d, Some(n), false, ma)
    });
    e.register_fn("split", move |s: &mut ImmutableString, d: char, n: INT| {
        split_checked(s, d.encode_utf8(&mut [0; 4]), Some(n), false, ma)
    });
    e.register_fn("split_rev", move |s: &mut ImmutableString, d: &str| {
        split_checked(s, d, None, true, ma)
    });
    e.register_fn("split_rev", move |s: &mut ImmutableString, d: char| {
        split_checked(s, d.encode_utf8(&mut [0; 4]), None, true, ma)
    });
    e.register_fn(
        "split_rev",
        move |s: &mut ImmutableString, d: &str, n: INT| split_checked(s, d, Some(n), true, ma),
    );
    e.register_fn(
        "split_rev",
        move |s: &mut ImmutableString, d: char, n: INT| {
            split_checked(s, d.encode_utf8(&mut [0; 4]), Some(n), true, ma)
        },
    );
    e.register_fn("split", move |s: &mut ImmutableString| -> Res<Array> {
        let n = s.split_whitespace().count();
        if n > ma {
            return Err(too_large("the split array", n, ma));
        }
        Ok(s.split_whitespace()
            .map(|p| Dynamic::from(p.to_string()))
            .collect())
    });

    // print, debug, to_string, to_debug and string concatenation all format arrays and maps
    // through these names.
    for name in ["print", "to_string", "debug", "to_debug"] {
        let g = guard.clone();
        e.register_fn(name, move |a: &mut Array| {
            format_bounded(&g, "array", ms, |w| write_array(w, a))
        });
        let g = guard.clone();
        e.register_fn(name, move |m: &mut Map| {
            format_bounded(&g, "map", ms, |w| write_map(w, m))
        });
    }

    // A sleeping plugin holds the training loop without spending an operation.
    e.register_fn("sleep", |_: INT| -> Res<()> {
        Err("plugins may not sleep: a call that waits holds up training".into())
    });
    e.register_fn("sleep", |_: rhai::FLOAT| -> Res<()> {
        Err("plugins may not sleep: a call that waits holds up training".into())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_length_is_exact() {
        for (s, f, r) in [
            ("axbxc", "x", "yyy"),
            ("aaaa", "aa", ""),
            ("abc", "", "-"),
            ("héllo", "l", "LL"),
        ] {
            assert_eq!(
                replaced_len(s, f, r.len()),
                s.replace(f, r).len(),
                "{s} {f} {r}"
            );
        }
    }

    #[test]
    fn split_counts_match_std() {
        for (s, d) in [("a,b,,c", ","), ("abc", ""), ("", ","), ("x--y--", "--")] {
            assert_eq!(parts(s, d), s.split(d).count(), "{s:?} {d:?}");
        }
    }
}
