//! Turning a growing list of generated ids into text deltas: waits while the decoded text ends
//! in an incomplete UTF-8 sequence, cuts at the first `stop` string, and holds back any tail that
//! could still become a stop string so a streamed delta never has to be taken back.

use axbench_models::tokenizer::Tokenizer;

pub struct TextAssembler<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    text: String,
    sent: usize,
    stops: Vec<String>,
    /// A stop string was found: the text is final and later tokens are ignored.
    pub stopped: bool,
}

impl<'a> TextAssembler<'a> {
    pub fn new(tokenizer: &'a Tokenizer, stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            tokenizer,
            ids: vec![],
            text: String::new(),
            sent: 0,
            stops,
            stopped: false,
        }
    }

    /// Adds a token; returns the text that is now safe to send (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.stopped {
            return String::new();
        }
        self.ids.push(id);
        let decoded = self.tokenizer.decode(&self.ids, true).unwrap_or_default();
        if decoded.ends_with('\u{FFFD}') {
            // Most likely the first bytes of a multi-byte character: wait for the rest.
            return String::new();
        }
        self.text = decoded;
        if let Some(p) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(p);
            self.stopped = true;
            return self.take(self.text.len());
        }
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| self.text.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        self.take(self.text.len() - hold)
    }

    /// Everything not yet sent (call once the row is done).
    pub fn finish(&mut self) -> String {
        if !self.stopped {
            // A trailing incomplete character is sent as the tokenizer renders it.
            self.text = self.tokenizer.decode(&self.ids, true).unwrap_or_default();
        }
        self.take(self.text.len())
    }

    /// The full text so far (after `finish`, the final text).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take(&mut self, end: usize) -> String {
        let mut end = end.max(self.sent);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text[self.sent..end.max(self.sent)].to_string();
        self.sent = end.max(self.sent);
        out
    }
}
