//! The mock upstream's content: deterministic OpenAI-style streams and completions.
//!
//! Everything the mock sends is a pure function of a [`StreamScript`] (seed, token count,
//! model, usage flag), so a harness that knows the script can compute the exact chunks the
//! mock wrote without talking to it. The text mixes Korean, emoji and ASCII, so multi-byte
//! UTF-8 sits in almost every chunk.
//!
//! ```
//! use chunkgate::harness::script::StreamScript;
//!
//! let script = StreamScript::new(1, 4);
//! let events = script.events();
//! assert_eq!(events.len(), 4 + 3); // role, 4 tokens, finish, [DONE]
//! assert!(events.iter().all(|e| e.starts_with(b"data: ") && e.ends_with(b"\n\n")));
//! assert_eq!(&events[events.len() - 1][..], b"data: [DONE]\n\n");
//! ```

use bytes::Bytes;

/// The text the mock streams, one token per entry, read cyclically from a seeded start.
pub const CORPUS: &[&str] = &[
    "안녕하세요",
    "! ",
    "저는",
    " 청크",
    "게이트",
    "입니다",
    ". ",
    "🚀",
    " 한국어",
    " 텍스트",
    "도",
    ", ",
    "이모지",
    "도",
    " 😀",
    " 깨지지",
    " 않고",
    " 그대로",
    " 도착합니다",
    ". ",
    "Streaming",
    " LLM",
    " 응답",
    "은",
    " 토큰",
    " 하나",
    "씩",
    " 옵니다",
    " 🎉",
    " Every",
    " chunk",
    " arrives",
    " whole",
    ": ",
    "한",
    " 글자",
    "도",
    " 잘리지",
    " 않습니다",
    ". ",
    "스트리밍",
    "이",
    " 끝날",
    " 때까지",
    " 모든",
    " 이벤트",
    "가",
    " 온전합니다",
    " 👍",
    " ",
];

/// Fixed `created` timestamp of every mock response (2023-11-14T22:13:20Z), so output is
/// reproducible.
pub const CREATED: u64 = 1_700_000_000;

/// One streamed or non-streamed completion, fully determined by its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamScript {
    /// Chooses the completion id and where in [`CORPUS`] the text starts.
    pub seed: u64,
    /// Content tokens (one content event each when streaming).
    pub tokens: usize,
    /// The model named in every event.
    pub model: String,
    /// Send a usage event before `[DONE]` (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl StreamScript {
    /// A script with the default model `mock-1` and no usage event.
    pub fn new(seed: u64, tokens: usize) -> StreamScript {
        StreamScript {
            seed,
            tokens,
            model: "mock-1".to_string(),
            include_usage: false,
        }
    }

    /// The completion id, `chatcmpl-mock-<seed in hex>`.
    pub fn id(&self) -> String {
        format!("chatcmpl-mock-{:016x}", self.seed)
    }

    /// The `i`-th content token.
    pub fn token(&self, i: usize) -> &'static str {
        let start = (self.seed % CORPUS.len() as u64) as usize;
        CORPUS[(start + i) % CORPUS.len()]
    }

    /// The whole completion text.
    pub fn text(&self) -> String {
        (0..self.tokens).map(|i| self.token(i)).collect()
    }

    /// Number of events in the stream: role, tokens, finish, usage if asked, `[DONE]`.
    pub fn event_count(&self) -> usize {
        self.tokens + 3 + usize::from(self.include_usage)
    }

    /// The `i`-th event (`data: ...\n\n`), with a `sent_ns` field when `sent_ns` is given.
    /// Out-of-range indices give the `[DONE]` event.
    pub fn event(&self, i: usize, sent_ns: Option<u64>) -> Bytes {
        let last = self.event_count() - 1;
        if i >= last {
            return Bytes::from_static(b"data: [DONE]\n\n");
        }
        let stamp = sent_ns
            .map(|ns| format!(",\"sent_ns\":{ns}"))
            .unwrap_or_default();
        let head = format!(
            "{{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\"model\":{}{stamp}",
            self.id(),
            json_string(&self.model)
        );
        let body = if i == 0 {
            "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]"
                .to_string()
        } else if i <= self.tokens {
            format!(
                "\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]",
                json_string(self.token(i - 1))
            )
        } else if i == self.tokens + 1 {
            "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]".to_string()
        } else {
            format!(
                "\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{t}}}",
                p = PROMPT_TOKENS,
                c = self.tokens,
                t = PROMPT_TOKENS + self.tokens
            )
        };
        Bytes::from(format!("data: {head},{body}}}\n\n"))
    }

    /// Every event of the stream, without timestamps: the exact chunk payloads the mock sends.
    pub fn events(&self) -> Vec<Bytes> {
        (0..self.event_count())
            .map(|i| self.event(i, None))
            .collect()
    }

    /// The non-streaming answer (`"stream": false`): one `chat.completion` JSON object.
    pub fn completion(&self) -> Vec<u8> {
        format!(
            "{{\"id\":\"{id}\",\"object\":\"chat.completion\",\"created\":{CREATED},\"model\":{model},\
\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text}}},\"finish_reason\":\"stop\"}}],\
\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{t}}}}}",
            id = self.id(),
            model = json_string(&self.model),
            text = json_string(&self.text()),
            p = PROMPT_TOKENS,
            c = self.tokens,
            t = PROMPT_TOKENS + self.tokens,
        )
        .into_bytes()
    }
}

/// Prompt tokens reported in usage (the mock does not count the prompt).
const PROMPT_TOKENS: usize = 12;

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Deterministic request-body chunks for the request direction: lines of mixed-script text,
/// most of them small, some over 256 bytes (three hex digits in the size line).
pub fn request_chunks(seed: u64, count: usize) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|i| {
            let tokens = if rng.u8(..8) == 0 {
                rng.usize(60..120)
            } else {
                rng.usize(1..12)
            };
            let start = rng.usize(..CORPUS.len());
            let mut s = format!("{i:03} ");
            for t in 0..tokens {
                s.push_str(CORPUS[(start + t) % CORPUS.len()]);
            }
            s.push('\n');
            Bytes::from(s)
        })
        .collect()
}

/// SplitMix64: derives independent per-case seeds from one run seed.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(b.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_events_are_valid_sse_with_json() {
        let mut s = StreamScript::new(42, 30);
        s.include_usage = true;
        let events = s.events();
        assert_eq!(events.len(), s.event_count());
        for e in &events[..events.len() - 1] {
            let text = std::str::from_utf8(e).unwrap();
            let json = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
        }
        let usage: serde_json::Value =
            serde_json::from_slice(&events[events.len() - 2][6..]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 30);
    }

    #[test]
    fn script_content_concatenates_to_text_with_multibyte_characters() {
        let s = StreamScript::new(3, 20);
        let mut text = String::new();
        for e in &s.events()[1..=20] {
            let v: serde_json::Value = serde_json::from_slice(&e[6..]).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
        }
        assert_eq!(text, s.text());
        assert!(text.chars().any(|c| c.len_utf8() > 1));
    }

    #[test]
    fn script_timestamp_is_a_json_field() {
        let s = StreamScript::new(1, 2);
        let e = s.event(1, Some(123));
        let v: serde_json::Value = serde_json::from_slice(&e[6..]).unwrap();
        assert_eq!(v["sent_ns"], 123);
    }

    #[test]
    fn completion_is_json_with_the_whole_text() {
        let s = StreamScript::new(5, 10);
        let v: serde_json::Value = serde_json::from_slice(&s.completion()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], s.text());
    }

    #[test]
    fn request_chunks_are_deterministic_and_nonempty() {
        let a = request_chunks(7, 40);
        assert_eq!(a, request_chunks(7, 40));
        assert!(a.iter().all(|c| !c.is_empty()));
        assert!(a.iter().any(|c| c.len() > 255));
    }

    #[test]
    fn mix_seed_differs_per_case() {
        assert_ne!(mix_seed(1, 0, 0), mix_seed(1, 0, 1));
        assert_ne!(mix_seed(1, 0, 0), mix_seed(1, 1, 0));
        assert_eq!(mix_seed(1, 2, 3), mix_seed(1, 2, 3));
    }
}
