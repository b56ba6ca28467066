//! Reasoning kept apart from the answer: models such as Qwen3, SmolLM3 or DeepSeek-R1's
//! distills write their thinking between `<think>` and `</think>` before answering (or their
//! chat template opens the `<think>` itself, and only the close appears in the output). A
//! [`ReasoningSplitter`] takes the generated text as it streams and hands on each piece as
//! reasoning or answer, the markers removed — never holding back more than the start of a
//! marker that may still be completing.

/// The part of the output a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Reasoning,
    Answer,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a model writes reasoning, and whether a prompt leaves it inside a reasoning block:
/// `None` when the tokenizer has no `</think>` token (the markers would be ordinary text),
/// else `Some(true)` when the rendered prompt ends in an open `<think>`.
pub fn reasoning_start(close_token: Option<u32>, prompt: &str) -> Option<bool> {
    close_token?;
    let tail = prompt.trim_end();
    let open = tail.rfind(OPEN);
    Some(open.is_some_and(|at| !tail[at..].contains(CLOSE)))
}

/// Splits streamed text into reasoning and answer.
#[derive(Debug)]
pub struct ReasoningSplitter {
    part: Part,
    /// Text not yet handed on: a possible start of the next marker.
    held: String,
    /// Whitespace right after `</think>` is dropped (the answer starts after it).
    trim_start: bool,
}

impl ReasoningSplitter {
    /// A splitter that starts inside reasoning when `inside` (the prompt opened it).
    pub fn new(inside: bool) -> ReasoningSplitter {
        ReasoningSplitter {
            part: if inside {
                Part::Reasoning
            } else {
                Part::Answer
            },
            held: String::new(),
            trim_start: false,
        }
    }

    /// The marker that ends the current part.
    fn marker(&self) -> &'static str {
        match self.part {
            Part::Answer => OPEN,
            Part::Reasoning => CLOSE,
        }
    }

    /// Takes the next piece of generated text; `out` gets what is now known to be reasoning or
    /// answer (possibly several calls, possibly none).
    pub fn push(&mut self, piece: &str, out: &mut dyn FnMut(Part, &str)) {
        self.held.push_str(piece);
        loop {
            if self.trim_start {
                let trimmed = self.held.trim_start();
                if trimmed.is_empty() {
                    self.held.clear();
                    return;
                }
                self.held = trimmed.to_string();
                self.trim_start = false;
            }
            let marker = self.marker();
            if let Some(at) = self.held.find(marker) {
                if at > 0 {
                    out(self.part, &self.held[..at]);
                }
                self.held.drain(..at + marker.len());
                self.trim_start = self.part == Part::Reasoning;
                self.part = match self.part {
                    Part::Answer => Part::Reasoning,
                    Part::Reasoning => Part::Answer,
                };
                continue;
            }
            // Keep the longest tail that could still become the marker.
            let keep = (1..marker.len())
                .rev()
                .find(|&n| {
                    self.held.len() >= n
                        && self.held.is_char_boundary(self.held.len() - n)
                        && marker.starts_with(&self.held[self.held.len() - n..])
                })
                .unwrap_or(0);
            let send = self.held.len() - keep;
            if send > 0 {
                out(self.part, &self.held[..send]);
                self.held.drain(..send);
            }
            return;
        }
    }

    /// The end of the text: whatever was held is what it looked like.
    pub fn finish(&mut self, out: &mut dyn FnMut(Part, &str)) {
        if !self.held.is_empty() && !self.trim_start {
            out(self.part, &self.held);
        }
        self.held.clear();
    }
}

/// A whole text split: the reasoning (`None` when there was none) and the answer.
pub fn split(text: &str, inside: bool) -> (Option<String>, String) {
    let mut splitter = ReasoningSplitter::new(inside);
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

    fn streamed(text: &str, inside: bool, step: usize) -> (String, String) {
        let mut s = ReasoningSplitter::new(inside);
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

    #[test]
    fn markers_split_the_stream_however_it_is_cut() {
        let text = "<think>\nLet me see: 2 < 3.\n</think>\n\nThe answer is 4 <thin air>.";
        for step in 1..=text.len() {
            let (r, a) = streamed(text, false, step);
            assert_eq!(r, "\nLet me see: 2 < 3.\n", "step {step}");
            assert_eq!(a, "The answer is 4 <thin air>.", "step {step}");
        }
        // The template opened the block: only the close is generated.
        let (r, a) = streamed("thinking… ünïcode</think>\n\nÄnswer", true, 3);
        assert_eq!((r.as_str(), a.as_str()), ("thinking… ünïcode", "Änswer"));
        // No markers: all answer; an unfinished marker at the end is text.
        assert_eq!(
            streamed("plain <thi", false, 2),
            (String::new(), "plain <thi".into())
        );
        // Cut off while thinking: all reasoning.
        assert_eq!(
            split("<think>still going", false),
            (Some("still going".into()), String::new())
        );
        assert_eq!(split("just text", false), (None, "just text".into()));
    }

    #[test]
    fn the_prompt_says_where_generation_starts() {
        assert_eq!(
            reasoning_start(None, "<|im_start|>assistant\n<think>\n"),
            None
        );
        assert_eq!(
            reasoning_start(Some(7), "<|im_start|>assistant\n<think>\n"),
            Some(true)
        );
        assert_eq!(
            reasoning_start(Some(7), "assistant\n<think>\n\n</think>\n\n"),
            Some(false)
        );
        assert_eq!(
            reasoning_start(Some(7), "<|im_start|>assistant\n"),
            Some(false)
        );
    }
}
