//! Line and column for a path in the YAML file (`routing.rules[2].to`), so that validation
//! errors found after serde has finished can still point at the text ops must edit.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Maps dotted paths (`channels.platform_wechat.timeout`, `routing.rules[0]`) to the
/// 1-based `(line, column)` where that key or item starts.
#[derive(Debug, Default)]
pub struct Locator {
    positions: HashMap<String, (usize, usize)>,
}

impl Locator {
    /// Never fails: a file that does not parse has no positions (serde reports its error).
    pub fn new(text: &str) -> Locator {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Locator::default();
        }
        Locator {
            positions: walker.positions,
        }
    }

    /// The position of `path`, else of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Walker {
    fn record(&mut self, path: String, mark: Marker) {
        self.positions
            .entry(path)
            .or_insert((mark.line(), mark.col() + 1));
    }

    /// The path of the node that starts now, in value position of the top frame.
    fn value_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { path, key }) => join(path, key.as_deref().unwrap_or("?")),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
        }
    }

    /// A value finished: the map waits for its next key, the sequence for its next item.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let child = join(path, &value);
                    *key = Some(value);
                    self.record(child, mark);
                    return;
                }
                let p = self.value_path();
                self.record(p, mark);
                self.advance();
            }
            Event::Alias(_) => {
                let p = self.value_path();
                self.record(p, mark);
                self.advance();
            }
            Event::MappingStart(..) => {
                let path = self.value_path();
                self.record(path.clone(), mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path();
                self.record(path.clone(), mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_block_and_flow_style() {
        let text = "server:\n  listen: x\nrouting:\n  rules:\n    - name: a\n      to: ch\n    - { name: b, split: [ { to: c, weight: 1 } ] }\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find("server.listen"), Some((2, 3)));
        assert_eq!(loc.find("routing.rules[0].to"), Some((6, 7)));
        assert_eq!(loc.find("routing.rules[1].name"), Some((7, 9)));
        assert_eq!(
            loc.find("routing.rules[1].split[0].to").map(|p| p.0),
            Some(7)
        );
        // Unknown leaf: falls back to the nearest ancestor (its line).
        assert_eq!(loc.find("routing.rules[0].fallback").map(|p| p.0), Some(5));
    }
}
