//! Reasoning kept apart from the answer. Two ways of marking it are in use:
//! - `<think>…</think>` (Qwen3, SmolLM3, DeepSeek-R1's distills): the thinking comes between
//!   the markers before the answer, or the chat template opens the `<think>` itself and only
//!   the close appears in the output;
//! - OpenAI's harmony format (gpt-oss): the answer is a series of messages, each a header and
//!   a body — `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final
//!   <|message|>…<|return|>` — where the `analysis` channel is the reasoning and every other
//!   channel (`final`, `commentary`) is shown to the user. Its markers are special tokens, so
//!   a harmony model's output is decoded with them kept (see
//!   [`super::tokenizer::TextTokenizer::decode`]).
//!
//! A [`ReasoningSplitter`] takes the generated text as it streams and hands on each piece as
//! reasoning or answer, the markers removed — never holding back more than the start of a
//! marker that may still be completing.

/// The part of the output a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Reasoning,
    Answer,
}

/// How a model marks its reasoning, and where the generation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<think>…</think>`; `inside` when the prompt opened the block.
    Think { inside: bool },
    /// Harmony messages; `in_header` when the prompt ends in an open message header (the
    /// chat template's `<|start|>assistant`), so the output starts with the channel.
    Harmony { in_header: bool },
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Harmony's markers (special tokens of the gpt-oss vocabulary).
const H_START: &str = "<|start|>";
const H_CHANNEL: &str = "<|channel|>";
const H_MESSAGE: &str = "<|message|>";
/// What ends a harmony message: `<|end|>`, or an end of generation (normally an eos token and
/// not decoded, but a request may have made it ordinary text).
const H_ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];

/// The longest header taken as one: role, channel, recipient and content type are a few
/// dozen bytes.
const HEADER_MAX: usize = 256;

/// Whether a harmony vocabulary: the tokens that frame a harmony message.
pub fn is_harmony_vocabulary(token_id: &dyn Fn(&str) -> Option<u32>) -> bool {
    [H_START, H_CHANNEL, H_MESSAGE, H_ENDS[0]]
        .iter()
        .all(|t| token_id(t).is_some())
}

/// How the answer to `prompt` marks its reasoning: `harmony` for a harmony vocabulary (see
/// [`is_harmony_vocabulary`]); else `<think>` when the tokenizer has a `</think>` token
/// (`close_token`), else `None` (the markers would be ordinary text).
pub fn format_of(harmony: bool, close_token: Option<u32>, prompt: &str) -> Option<Format> {
    let tail = prompt.trim_end();
    if harmony {
        let in_header = tail
            .rfind(H_START)
            .is_some_and(|at| !tail[at..].contains(H_MESSAGE));
        return Some(Format::Harmony { in_header });
    }
    close_token?;
    let open = tail.rfind(OPEN);
    Some(Format::Think {
        inside: open.is_some_and(|at| !tail[at..].contains(CLOSE)),
    })
}

/// Where a harmony splitter is.
#[derive(Debug, PartialEq)]
enum HarmonyState {
    /// In a header (role, channel, recipient…) until `<|message|>`: nothing of it is shown.
    Header,
    /// In a message's body (or, outside any message, text shown as answer).
    Body(Part),
}

#[derive(Debug)]
enum Mode {
    Think {
        part: Part,
        /// Whitespace right after `</think>` is dropped (the answer starts after it).
        trim_start: bool,
    },
    Harmony {
        state: HarmonyState,
        /// The header read so far (from the prompt's open header on).
        header: String,
        /// A reasoning message was shown: the next one is set apart by a blank line.
        reasoned: bool,
    },
}

/// Splits streamed text into reasoning and answer.
#[derive(Debug)]
pub struct ReasoningSplitter {
    mode: Mode,
    /// Text not yet handed on: a possible start of the next marker.
    held: String,
}

/// The longest tail of `text` that is a proper prefix of one of `markers` (and so may still
/// become it).
fn marker_prefix_len(text: &str, markers: &[&str]) -> usize {
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    (1..longest.min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && markers
                    .iter()
                    .any(|m| m.len() > n && m.starts_with(&text[text.len() - n..]))
        })
        .unwrap_or(0)
}

/// The earliest of `markers` in `text`: (position, marker).
fn first_marker<'m>(text: &str, markers: &[&'m str]) -> Option<(usize, &'m str)> {
    markers
        .iter()
        .filter_map(|m| text.find(m).map(|at| (at, *m)))
        .min_by_key(|&(at, _)| at)
}

/// The channel a harmony header names (`assistant<|channel|>analysis` → `analysis`; a
/// recipient or content type may follow the name after a space or a marker).
fn header_channel(header: &str) -> Option<&str> {
    let (_, rest) = header.split_once(H_CHANNEL)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

impl ReasoningSplitter {
    pub fn new(format: Format) -> ReasoningSplitter {
        let mode = match format {
            Format::Think { inside } => Mode::Think {
                part: if inside {
                    Part::Reasoning
                } else {
                    Part::Answer
                },
                trim_start: false,
            },
            Format::Harmony { in_header } => Mode::Harmony {
                state: if in_header {
                    HarmonyState::Header
                } else {
                    HarmonyState::Body(Part::Answer)
                },
                header: String::new(),
                reasoned: false,
            },
        };
        ReasoningSplitter {
            mode,
            held: String::new(),
        }
    }

    /// Takes the next piece of generated text; `out` gets what is now known to be reasoning or
    /// answer (possibly several calls, possibly none).
    pub fn push(&mut self, piece: &str, out: &mut dyn FnMut(Part, &str)) {
        self.held.push_str(piece);
        match self.mode {
            Mode::Think { .. } => self.push_think(out),
            Mode::Harmony { .. } => self.push_harmony(out),
        }
    }

    fn push_think(&mut self, out: &mut dyn FnMut(Part, &str)) {
        let Mode::Think { part, trim_start } = &mut self.mode else {
            return;
        };
        loop {
            if *trim_start {
                let trimmed = self.held.trim_start();
                if trimmed.is_empty() {
                    self.held.clear();
                    return;
                }
                self.held = trimmed.to_string();
                *trim_start = false;
            }
            let marker = match part {
                Part::Answer => OPEN,
                Part::Reasoning => CLOSE,
            };
            if let Some(at) = self.held.find(marker) {
                if at > 0 {
                    out(*part, &self.held[..at]);
                }
                self.held.drain(..at + marker.len());
                *trim_start = *part == Part::Reasoning;
                *part = match part {
                    Part::Answer => Part::Reasoning,
                    Part::Reasoning => Part::Answer,
                };
                continue;
            }
            let send = self.held.len() - marker_prefix_len(&self.held, &[marker]);
            if send > 0 {
                out(*part, &self.held[..send]);
                self.held.drain(..send);
            }
            return;
        }
    }

    fn push_harmony(&mut self, out: &mut dyn FnMut(Part, &str)) {
        let Mode::Harmony {
            state,
            header,
            reasoned,
        } = &mut self.mode
        else {
            return;
        };
        const BODY_ENDS: [&str; 4] = [H_START, H_ENDS[0], H_ENDS[1], H_ENDS[2]];
        loop {
            match state {
                HarmonyState::Header => {
                    if let Some(at) = self.held.find(H_MESSAGE) {
                        header.push_str(&self.held[..at]);
                        self.held.drain(..at + H_MESSAGE.len());
                        let part = match header_channel(header) {
                            Some("analysis") => Part::Reasoning,
                            _ => Part::Answer,
                        };
                        if part == Part::Reasoning && *reasoned {
                            out(Part::Reasoning, "\n\n");
                        }
                        *reasoned |= part == Part::Reasoning;
                        header.clear();
                        *state = HarmonyState::Body(part);
                        continue;
                    }
                    // A header is short: keep it whole until its `<|message|>` arrives.
                    let keep = marker_prefix_len(&self.held, &[H_MESSAGE]);
                    let take = self.held.len() - keep;
                    header.push_str(&self.held[..take]);
                    self.held.drain(..take);
                    if header.len() > HEADER_MAX {
                        // Not a header: a model that does not follow the format. Its text is
                        // shown rather than swallowed.
                        let text = std::mem::take(header);
                        self.held.insert_str(0, &text);
                        *state = HarmonyState::Body(Part::Answer);
                        continue;
                    }
                    return;
                }
                HarmonyState::Body(part) => {
                    let part = *part;
                    if let Some((at, marker)) = first_marker(&self.held, &BODY_ENDS) {
                        if at > 0 {
                            out(part, &self.held[..at]);
                        }
                        self.held.drain(..at + marker.len());
                        *state = if marker == H_START {
                            HarmonyState::Header
                        } else {
                            // Between messages: whatever comes before the next header is
                            // shown as answer rather than lost.
                            HarmonyState::Body(Part::Answer)
                        };
                        continue;
                    }
                    let send = self.held.len() - marker_prefix_len(&self.held, &BODY_ENDS);
                    if send > 0 {
                        out(part, &self.held[..send]);
                        self.held.drain(..send);
                    }
                    return;
                }
            }
        }
    }

    /// The end of the text: whatever was held is what it looked like.
    pub fn finish(&mut self, out: &mut dyn FnMut(Part, &str)) {
        let part = match &self.mode {
            Mode::Think {
                trim_start: true, ..
            } => None,
            Mode::Think { part, .. } => Some(*part),
            // An unfinished header shows nothing, unless it was no header at all (no marker).
            Mode::Harmony {
                state: HarmonyState::Header,
                header,
                ..
            } => {
                if !header.contains("<|") && !self.held.contains("<|") {
                    self.held.insert_str(0, header);
                    Some(Part::Answer)
                } else {
                    None
                }
            }
            Mode::Harmony {
                state: HarmonyState::Body(part),
                ..
            } => Some(*part),
        };
        if let Some(part) = part.filter(|_| !self.held.is_empty()) {
            out(part, &self.held);
        }
        self.held.clear();
    }
}

/// A whole text split: the reasoning (`None` when there was none) and the answer.
pub fn split(text: &str, format: Format) -> (Option<String>, String) {
    let mut splitter = ReasoningSplitter::new(format);
    let (mut reasoning, mut answer) = (None::<String>, String::new());
    let mut take = |part: Part, s: &str| match part {
        Part::Reasoning => reasoning.get_or_insert_with(String::new).push_str(s),
        Part::Answer => answer.push_str(s),
    };
    splitter.push(text, &mut take);
    splitter.finish(&mut take);
    (reasoning.map(|r| r.trim().to_string()), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(text: &str, format: Format, step: usize) -> (String, String) {
        let mut s = ReasoningSplitter::new(format);
        let (mut r, mut a) = (String::new(), String::new());
        let mut take = |p: Part, t: &str| match p {
            Part::Reasoning => r.push_str(t),
            Part::Answer => a.push_str(t),
        };
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(step) {
            s.push(&piece.iter().collect::<String>(), &mut take);
        }
        s.finish(&mut take);
        (r, a)
    }

    const THINK: Format = Format::Think { inside: false };
    const HARMONY: Format = Format::Harmony { in_header: true };

    #[test]
    fn markers_split_the_stream_however_it_is_cut() {
        let text = "<think>\nLet me see: 2 < 3.\n</think>\n\nThe answer is 4 <thin air>.";
        for step in 1..=text.len() {
            let (r, a) = streamed(text, THINK, step);
            assert_eq!(r, "\nLet me see: 2 < 3.\n", "step {step}");
            assert_eq!(a, "The answer is 4 <thin air>.", "step {step}");
        }
        // The template opened the block: only the close is generated.
        let (r, a) = streamed(
            "thinking… ünïcode</think>\n\nÄnswer",
            Format::Think { inside: true },
            3,
        );
        assert_eq!((r.as_str(), a.as_str()), ("thinking… ünïcode", "Änswer"));
        // No markers: all answer; an unfinished marker at the end is text.
        assert_eq!(
            streamed("plain <thi", THINK, 2),
            (String::new(), "plain <thi".into())
        );
        // Cut off while thinking: all reasoning.
        assert_eq!(
            split("<think>still going", THINK),
            (Some("still going".into()), String::new())
        );
        assert_eq!(split("just text", THINK), (None, "just text".into()));
    }

    #[test]
    fn harmony_channels_split_the_stream_however_it_is_cut() {
        // What gpt-oss writes after the template's `<|start|>assistant`.
        let text = "<|channel|>analysis<|message|>User says hi; 2 <| 3. Answer briefly.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>Hello — ünïcödé <b>!</b><|return|>";
        for step in 1..=text.chars().count() {
            let (r, a) = streamed(text, HARMONY, step);
            assert_eq!(r, "User says hi; 2 <| 3. Answer briefly.", "step {step}");
            assert_eq!(a, "Hello — ünïcödé <b>!</b>", "step {step}");
        }
        // Two analysis messages (around a commentary preamble, which the user sees), a
        // recipient and content type in a header.
        let text = "<|channel|>analysis<|message|>one<|end|>\
                    <|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>\
                    <|start|>assistant<|channel|>analysis<|message|>two<|end|>\
                    <|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>";
        assert_eq!(
            split(text, HARMONY),
            (Some("one\n\ntwo".into()), "Checking.{}".into())
        );
        // Cut off in the middle of reasoning, or of the final header.
        assert_eq!(
            split("<|channel|>analysis<|message|>hmm", HARMONY),
            (Some("hmm".into()), String::new())
        );
        assert_eq!(
            split(
                "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|chan",
                HARMONY
            ),
            (Some("hmm".into()), String::new())
        );
        // Low reasoning effort: straight to the final channel.
        assert_eq!(
            split("<|channel|>final<|message|>Hi.", HARMONY),
            (None, "Hi.".into())
        );
        // A model that ignores the format: its text is shown, not swallowed as a header.
        assert_eq!(split("Hi there", HARMONY), (None, "Hi there".into()));
        let long = "x".repeat(HEADER_MAX + 10);
        assert_eq!(streamed(&long, HARMONY, 7), (String::new(), long.clone()));
        // A prompt that did not open a header: plain text is answer.
        assert_eq!(
            split("plain", Format::Harmony { in_header: false }),
            (None, "plain".into())
        );
    }

    #[test]
    fn the_prompt_says_where_generation_starts() {
        assert_eq!(
            format_of(false, None, "<|im_start|>assistant\n<think>\n"),
            None
        );
        assert_eq!(
            format_of(false, Some(7), "<|im_start|>assistant\n<think>\n"),
            Some(Format::Think { inside: true })
        );
        assert_eq!(
            format_of(false, Some(7), "assistant\n<think>\n\n</think>\n\n"),
            Some(Format::Think { inside: false })
        );
        assert_eq!(
            format_of(false, Some(7), "<|im_start|>assistant\n"),
            Some(Format::Think { inside: false })
        );
        assert_eq!(
            format_of(
                true,
                None,
                "<|start|>user<|message|>Hi<|end|><|start|>assistant"
            ),
            Some(Format::Harmony { in_header: true })
        );
        assert_eq!(
            format_of(true, Some(7), "Once upon a time"),
            Some(Format::Harmony { in_header: false })
        );
        let ids = |t: &str| {
            ["<|start|>", "<|channel|>", "<|message|>", "<|end|>"]
                .iter()
                .position(|&s| s == t)
                .map(|i| i as u32)
        };
        assert!(is_harmony_vocabulary(&ids));
        assert!(!is_harmony_vocabulary(&|t| (t == "<|start|>").then_some(1)));
    }
}
