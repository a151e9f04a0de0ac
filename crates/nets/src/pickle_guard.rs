//! A pre-check of a checkpoint's pickle before candle's reader sees it. candle's reader
//! allocates what the stream declares (`BINUNICODE` with a 4 GiB length: found by fuzzing),
//! clones memoised objects on every `BINGET` (a few dozen bytes can double an object thirty
//! times over) and drops deeply nested values recursively. This walks the same opcodes
//! (exactly the ones candle accepts, with its stack semantics) tracking only sizes and
//! depths, and refuses a stream that would allocate more than a bound, nest too deep, or
//! declare more bytes than it has.

use std::collections::HashMap;

/// Most value nodes (plus string bytes / 8) the reader may build: a state dict has a few
/// per tensor.
pub const MAX_WEIGHT: u64 = 8 << 20;
/// Deepest nesting (a state dict nests about five levels).
pub const MAX_DEPTH: u32 = 256;

#[derive(Clone, Copy)]
struct Value {
    weight: u64,
    depth: u32,
}

enum Slot {
    Mark,
    Value(Value),
}

/// Checks a pickle stream; `Err` says why it is refused.
pub fn check(data: &[u8]) -> Result<(), String> {
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut total: u64 = 0;
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| "the pickle ends inside an opcode's argument".to_string())?;
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let line = |pos: &mut usize| -> Result<(), String> {
        let rest = &data[*pos..];
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| "a GLOBAL name has no end of line".to_string())?;
        *pos += n + 1;
        Ok(())
    };
    fn pop(stack: &mut Vec<Slot>) -> Result<Value, String> {
        match stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err("unexpected mark in the pickle".into()),
            None => Err("the pickle pops an empty stack".into()),
        }
    }
    fn to_mark(stack: &mut Vec<Slot>) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            match stack.pop() {
                Some(Slot::Value(v)) => out.push(v),
                Some(Slot::Mark) => return Ok(out),
                None => return Err("the pickle has no mark to pop to".into()),
            }
        }
    }
    let join = |parts: &[Value]| -> Value {
        Value {
            weight: parts.iter().fold(1u64, |a, p| a.saturating_add(p.weight)),
            depth: parts.iter().map(|p| p.depth).max().unwrap_or(0) + 1,
        }
    };
    let leaf = Value {
        weight: 1,
        depth: 1,
    };
    loop {
        let op = *take(&mut pos, 1)?.first().expect("one byte");
        let pushed: Option<Value> = match op {
            0x80 => {
                take(&mut pos, 1)?;
                None
            }
            b'c' => {
                line(&mut pos)?;
                line(&mut pos)?;
                Some(leaf)
            }
            b'q' | b'r' => {
                let idx = if op == b'q' {
                    u32::from(take(&mut pos, 1)?[0])
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes"))
                };
                match stack.last() {
                    Some(Slot::Value(v)) => {
                        memo.insert(idx, *v);
                    }
                    _ => return Err("the pickle memoises nothing".into()),
                }
                None
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    u32::from(take(&mut pos, 1)?[0])
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes"))
                };
                Some(
                    *memo
                        .get(&idx)
                        .ok_or_else(|| format!("the pickle gets memo {idx}, never put"))?,
                )
            }
            b')' | b']' | b'}' | b'd' | b'N' | 0x88 | 0x89 => Some(leaf),
            b'(' => {
                stack.push(Slot::Mark);
                None
            }
            b'X' => {
                let len = u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes"));
                take(&mut pos, len as usize)?;
                Some(Value {
                    weight: 1 + u64::from(len) / 8,
                    depth: 1,
                })
            }
            b'J' => {
                take(&mut pos, 4)?;
                Some(leaf)
            }
            b'K' => {
                take(&mut pos, 1)?;
                Some(leaf)
            }
            b'M' => {
                take(&mut pos, 2)?;
                Some(leaf)
            }
            b'G' => {
                take(&mut pos, 8)?;
                Some(leaf)
            }
            0x8a => {
                let n = take(&mut pos, 1)?[0];
                take(&mut pos, n as usize)?;
                Some(leaf)
            }
            b'R' | b'b' | 0x81 | b'a' => {
                let a = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                Some(join(&[a, b]))
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                let d = pop(&mut stack)?;
                Some(join(&[d, k, v]))
            }
            b't' => Some(join(&to_mark(&mut stack)?)),
            b'u' | b'e' => {
                let mut items = to_mark(&mut stack)?;
                items.push(pop(&mut stack)?);
                Some(join(&items))
            }
            b'Q' => Some(join(&[pop(&mut stack)?])),
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(pop(&mut stack)?);
                }
                Some(join(&items))
            }
            b'.' => return Ok(()),
            other => return Err(format!("unknown pickle opcode {other:#04x}")),
        };
        if let Some(v) = pushed {
            total = total.saturating_add(v.weight);
            if total > MAX_WEIGHT {
                return Err(format!(
                    "the pickle would build more than {MAX_WEIGHT} values (a state dict needs a few per tensor)"
                ));
            }
            if v.depth > MAX_DEPTH {
                return Err(format!("the pickle nests deeper than {MAX_DEPTH} levels"));
            }
            stack.push(Slot::Value(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_exhaust_memory_or_stack() {
        // BINUNICODE declaring 4 GiB with 3 bytes behind it (found by fuzzing).
        let e = check(b"\x80\x02X\xff\xff\xff\xffabc.").unwrap_err();
        assert!(e.contains("ends inside"), "{e}");
        // A list memoised and doubled 40 times: 2^40 nodes from 200 bytes.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let e = check(&p).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        // 100 000 nested one-tuples.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        let e = check(&p).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
        // Stack misuse is refused rather than left to the reader.
        assert!(check(b"\x80\x02R.").is_err());
        assert!(check(b"\x80\x02h\x05.").is_err());
        assert!(check(b"\x80\x02\xff.").is_err());
        assert!(check(b"\x80\x02N").is_err());
    }

    #[test]
    fn passes_a_small_state_dict_shape() {
        // {"w": (torch.FloatStorage, "0", "cpu", 4)} with memo puts and gets, as torch.save
        // writes them.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch\nFloatStorage\nq\x02X\x01\x00\x00\x000q\x03X\x03\x00\x00\x00cpuq\x04K\x04\x87q\x05h\x02\x86Qs.";
        check(p).unwrap();
    }
}
