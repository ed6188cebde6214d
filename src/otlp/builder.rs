//! Builds a window's OTLP profiles: one shared dictionary, one
//! `ResourceProfiles` per process.

use std::time::UNIX_EPOCH;

use rustc_hash::FxHashMap as HashMap;

use super::proto::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use super::proto::profiles::v1development::{
    Function, KeyValueAndUnit, Line, Location, Mapping, Profile, ProfilesDictionary, ResourceProfiles, Sample,
    ScopeProfiles, Stack, ValueType,
};
use super::proto::resource::v1::Resource;
use crate::pprof::ProfileMeta;
use crate::symbolize::samples::{Frame, MappingInfo, Sample as SymbolizedSample};
use crate::symbolize::FunctionInfo;

/// The semantic-convention attribute naming a frame's kind.
const FRAME_TYPE: &str = "profile.frame.type";
/// The semantic-convention attribute holding a mapping's GNU build id.
const BUILD_ID: &str = "process.executable.build_id.gnu";

/// A resource attribute's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    /// A string.
    Text(String),
    /// An integer (`process.pid`).
    Int(i64),
}

impl AttributeValue {
    fn any(&self) -> AnyValue {
        AnyValue {
            value: Some(match self {
                AttributeValue::Text(text) => any_value::Value::StringValue(text.clone()),
                AttributeValue::Int(number) => any_value::Value::IntValue(*number),
            }),
        }
    }
}

/// One process of the window: its resource attributes and its samples.
#[derive(Debug, Clone)]
pub struct ResourceInput<'a> {
    /// Resource attributes, in the order they are sent (OTel semantic
    /// convention names: `service.name`, `process.pid`, ...).
    pub attributes: Vec<(String, AttributeValue)>,
    /// The process's samples.
    pub samples: &'a [SymbolizedSample],
}

/// A window as OTLP: the dictionary every profile points into, and one
/// `ResourceProfiles` per [`ResourceInput`], in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowProfiles {
    /// The shared tables.
    pub dictionary: ProfilesDictionary,
    /// One per process.
    pub resources: Vec<ResourceProfiles>,
}

/// A dictionary attribute's identity: key string and value.
type AttributeKey = (i32, AttributeValue);
/// A location's identity: mapping, address, (function, line) pairs and
/// frame type attribute.
type LocationKey = (i32, u64, Vec<(i32, i64)>, i32);

/// Interns everything of one window. Every table starts with its zero
/// entry, so index 0 always means "none".
struct Dictionary<'a> {
    tables: ProfilesDictionary,
    strings: HashMap<String, i32>,
    attributes: HashMap<AttributeKey, i32>,
    mappings: HashMap<&'a MappingInfo, i32>,
    functions: HashMap<&'a FunctionInfo, i32>,
    locations: HashMap<LocationKey, i32>,
    stacks: HashMap<Vec<i32>, i32>,
}

/// An index into a dictionary table. The tables of one window never come
/// near `i32::MAX` entries (each entry costs bytes in one request); should
/// one ever, the index saturates rather than wrapping to a wrong entry.
fn index(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

impl<'a> Dictionary<'a> {
    fn new() -> Dictionary<'a> {
        let mut dictionary = Dictionary {
            tables: ProfilesDictionary {
                mapping_table: vec![Mapping::default()],
                location_table: vec![Location::default()],
                function_table: vec![Function::default()],
                link_table: vec![Default::default()],
                string_table: Vec::new(),
                attribute_table: vec![KeyValueAndUnit::default()],
                stack_table: vec![Stack::default()],
            },
            strings: HashMap::default(),
            attributes: HashMap::default(),
            mappings: HashMap::default(),
            functions: HashMap::default(),
            locations: HashMap::default(),
            stacks: HashMap::default(),
        };
        dictionary.string("");
        dictionary
    }

    fn string(&mut self, text: &str) -> i32 {
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = index(self.tables.string_table.len());
        self.tables.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), id);
        id
    }

    fn attribute(&mut self, key: &str, value: AttributeValue) -> i32 {
        let key = (self.string(key), value);
        if let Some(&id) = self.attributes.get(&key) {
            return id;
        }
        let id = index(self.tables.attribute_table.len());
        self.tables.attribute_table.push(KeyValueAndUnit {
            key_strindex: key.0,
            value: Some(key.1.any()),
            unit_strindex: 0,
        });
        self.attributes.insert(key, id);
        id
    }

    fn mapping(&mut self, info: &'a MappingInfo) -> i32 {
        if let Some(&id) = self.mappings.get(info) {
            return id;
        }
        let attribute_indices = match info.build_id.is_empty() {
            true => Vec::new(),
            false => vec![self.attribute(BUILD_ID, AttributeValue::Text(info.build_id.clone()))],
        };
        let mapping = Mapping {
            memory_start: info.start,
            memory_limit: info.limit,
            file_offset: info.file_offset,
            filename_strindex: self.string(&info.filename),
            attribute_indices,
        };
        let id = index(self.tables.mapping_table.len());
        self.tables.mapping_table.push(mapping);
        self.mappings.insert(info, id);
        id
    }

    fn function(&mut self, info: &'a FunctionInfo) -> i32 {
        if let Some(&id) = self.functions.get(info) {
            return id;
        }
        let function = Function {
            name_strindex: self.string(&info.name),
            system_name_strindex: self.string(&info.system_name),
            filename_strindex: self.string(&info.file),
            start_line: i64::from(info.start_line),
        };
        let id = index(self.tables.function_table.len());
        self.tables.function_table.push(function);
        self.functions.insert(info, id);
        id
    }

    fn location(&mut self, frame: &'a Frame) -> i32 {
        let mapping_index = frame.mapping.as_deref().map_or(0, |info| self.mapping(info));
        let lines: Vec<(i32, i64)> = frame
            .lines
            .iter()
            .map(|line| (self.function(&line.function), i64::from(line.line)))
            .collect();
        let kind = match (frame.kernel, frame.python) {
            (true, _) => "kernel",
            (false, true) => "cpython",
            (false, false) => "native",
        };
        let frame_type = self.attribute(FRAME_TYPE, AttributeValue::Text(kind.to_string()));
        let key = (mapping_index, frame.address, lines, frame_type);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let location = Location {
            mapping_index,
            address: frame.address,
            lines: key
                .2
                .iter()
                .map(|&(function_index, line)| Line {
                    function_index,
                    line,
                    column: 0,
                })
                .collect(),
            attribute_indices: vec![frame_type],
        };
        let id = index(self.tables.location_table.len());
        self.tables.location_table.push(location);
        self.locations.insert(key, id);
        id
    }

    fn stack(&mut self, frames: &'a [Frame]) -> i32 {
        let locations: Vec<i32> = frames.iter().map(|frame| self.location(frame)).collect();
        if let Some(&id) = self.stacks.get(&locations) {
            return id;
        }
        let id = index(self.tables.stack_table.len());
        self.tables.stack_table.push(Stack {
            location_indices: locations.clone(),
        });
        self.stacks.insert(locations, id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }
}

/// Builds the window: every table interned across all of `resources`, one
/// `ResourceProfiles` per resource with one profile covering `meta`'s
/// window. Samples of one stack and thread are merged into one.
pub fn build_window<'a>(resources: &'a [ResourceInput<'a>], meta: &ProfileMeta) -> WindowProfiles {
    let mut dictionary = Dictionary::new();
    let scope = InstrumentationScope {
        name: "taskprof".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    };
    let time_unix_nano = meta
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX));
    let duration_nano = u64::try_from(meta.duration.as_nanos()).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(resources.len());
    for resource in resources {
        let mut samples: Vec<Sample> = Vec::new();
        let mut merged: HashMap<(i32, Vec<i32>), usize> = HashMap::default();
        for sample in resource.samples {
            let stack_index = dictionary.stack(&sample.frames);
            let attribute_indices = vec![
                dictionary.attribute("thread.id", AttributeValue::Int(i64::from(sample.tid))),
                dictionary.attribute("thread.name", AttributeValue::Text(sample.thread_name.clone())),
            ];
            let count = i64::try_from(sample.count).unwrap_or(i64::MAX);
            match merged.entry((stack_index, attribute_indices)) {
                std::collections::hash_map::Entry::Occupied(slot) => {
                    let values = &mut samples[*slot.get()].values;
                    values[0] = values[0].saturating_add(count);
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    samples.push(Sample {
                        stack_index,
                        attribute_indices: slot.key().1.clone(),
                        link_index: 0,
                        values: vec![count],
                        timestamps_unix_nano: Vec::new(),
                    });
                    slot.insert(samples.len() - 1);
                }
            }
        }
        let profile = Profile {
            sample_type: Some(dictionary.value_type("samples", "count")),
            samples,
            time_unix_nano,
            duration_nano,
            period_type: Some(dictionary.value_type("cpu", "nanoseconds")),
            period: meta.period_nanos(),
            ..Default::default()
        };
        out.push(ResourceProfiles {
            resource: Some(Resource {
                attributes: resource
                    .attributes
                    .iter()
                    .map(|(key, value)| KeyValue {
                        key: key.clone(),
                        value: Some(value.any()),
                        key_strindex: 0,
                    })
                    .collect(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(scope.clone()),
                profiles: vec![profile],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    WindowProfiles {
        dictionary: dictionary.tables,
        resources: out,
    }
}
