//! The fake API's state, without I/O: the objects as JSON, the one global resourceVersion that only grows, the
//! bounded history of change events that watches replay, and the `Status` objects as the real API server writes them.

use std::collections::{BTreeMap, VecDeque};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};

/// How many change events a watch can be resumed across; older resourceVersions get 410 Gone.
const HISTORY: usize = 1000;

/// The kinds the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Secret,
    Lease,
}

/// A resource addressed by a request path: kind, namespace, and the name when the path names one object.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) name: Option<String>,
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    resource_version: u64,
    key: Key,
    pub(crate) kind_of_change: &'static str,
    pub(crate) object: Value,
}

/// A failed request's answer: the HTTP code and its `Status` object.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u16,
    pub(crate) status: Value,
}

/// An object's kind, namespace and name.
type Key = (Kind, String, String);

/// Objects, resourceVersion, history.
#[derive(Debug)]
pub(crate) struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    /// A watch from a resourceVersion below this one cannot be served from the history (410 Gone).
    oldest_resumable: u64,
}

// === impl Kind ===

impl Kind {
    fn resource(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::Lease => "leases",
        }
    }

    fn group(self) -> Option<&'static str> {
        match self {
            Kind::Secret => None,
            Kind::Lease => Some("coordination.k8s.io"),
        }
    }

    /// As the API server names the resource in messages: `secrets`, `leases.coordination.k8s.io`.
    fn qualified(self) -> String {
        match self.group() {
            Some(group) => format!("{}.{group}", self.resource()),
            None => self.resource().to_owned(),
        }
    }

    fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Kind::Secret => ("v1", "Secret"),
            Kind::Lease => ("coordination.k8s.io/v1", "Lease"),
        }
    }
}

// === impl Target ===

impl Target {
    /// `/api/v1/namespaces/{ns}/secrets[/{name}]` or `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]`.
    pub(crate) fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (kind, rest) = match segments.as_slice() {
            ["api", "v1", "namespaces", rest @ ..] if rest.get(1) == Some(&"secrets") => (Kind::Secret, rest),
            ["apis", "coordination.k8s.io", "v1", "namespaces", rest @ ..] if rest.get(1) == Some(&"leases") => {
                (Kind::Lease, rest)
            }
            _ => return None,
        };
        let [namespace, _, name @ ..] = rest else {
            return None;
        };
        let (namespace, name) = ((*namespace).to_owned(), name.first().map(|name| (*name).to_owned()));
        (rest.len() <= 3).then_some(Target { kind, namespace, name })
    }

    fn key(&self, name: &str) -> Key {
        (self.kind, self.namespace.clone(), name.to_owned())
    }

    /// A BOOKMARK event's object: type meta and the resourceVersion only.
    pub(crate) fn bookmark(&self, resource_version: u64) -> Value {
        let (api_version, kind) = self.kind.type_meta();
        json!({ "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": resource_version.to_string() } })
    }

    /// Whether the object is of this target's kind and namespace (and has its name, if it names one).
    fn covers(&self, (kind, namespace, name): &Key) -> bool {
        *kind == self.kind && *namespace == self.namespace && self.name.as_ref().is_none_or(|n| n == name)
    }
}

// === impl Failure ===

impl Failure {
    /// A `Status` object exactly as the API server writes one.
    pub(crate) fn new(code: u16, reason: &str, message: String, details: Option<(Kind, &str)>) -> Failure {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        if let Some((kind, name)) = details {
            let mut details = json!({ "name": name, "kind": kind.resource() });
            if let Some(group) = kind.group() {
                details["group"] = json!(group);
            }
            status["details"] = details;
        }
        Failure { code, status }
    }

    fn not_found(kind: Kind, name: &str) -> Failure {
        Failure::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified()),
            Some((kind, name)),
        )
    }

    /// The `Status` a watch sends in an ERROR event when its resourceVersion is older than the history.
    fn expired(requested: u64, oldest: u64) -> Failure {
        Failure::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
            None,
        )
    }

    pub(crate) fn bad_request(message: String) -> Failure {
        Failure::new(400, "BadRequest", message, None)
    }
}

// === impl Store ===

impl Store {
    pub(crate) fn new() -> Store {
        // Not 1: nothing may assume resourceVersions are small or start anywhere in particular.
        Store {
            resource_version: 1000,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest_resumable: 1000,
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(crate) fn get(&self, target: &Target, name: &str) -> Result<Value, Failure> {
        self.objects
            .get(&target.key(name))
            .cloned()
            .ok_or_else(|| Failure::not_found(target.kind, name))
    }

    /// The List of the target's objects (all of its kind in its namespace, or the one it names).
    pub(crate) fn list(&self, target: &Target) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(key, _)| target.covers(key))
            .map(|(_, object)| object.clone())
            .collect();
        let (api_version, kind) = target.kind.type_meta();
        json!({
            "kind": format!("{kind}List"), "apiVersion": api_version,
            "metadata": { "resourceVersion": self.resource_version.to_string() }, "items": items,
        })
    }

    /// POST: 409 AlreadyExists when the name is taken.
    pub(crate) fn create(&mut self, target: &Target, mut object: Value) -> Result<Value, Failure> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(Failure::new(
                422,
                "Invalid",
                "metadata.name: Required value: name is required".to_owned(),
                None,
            ));
        }
        if self.objects.contains_key(&target.key(&name)) {
            let message = format!("{} \"{name}\" already exists", target.kind.qualified());
            return Err(Failure::new(409, "AlreadyExists", message, Some((target.kind, &name))));
        }
        let uid = format!("6b1d3f0e-0000-4000-8000-{:012x}", self.resource_version + 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let created = k8s_openapi::jiff::Timestamp::from_second(now.try_into().unwrap()).unwrap();
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["creationTimestamp"] = json!(created.to_string());
        Ok(self.write(target, &name, object, "ADDED"))
    }

    /// PUT, by the real server's rules for these kinds: a body's resourceVersion must be the current one (409
    /// Conflict); without one a Secret is updated unconditionally and a Lease refused (422 Invalid); a missing
    /// Secret is 404 and a missing Lease created. An update that changes nothing writes nothing (no new
    /// resourceVersion, no event).
    pub(crate) fn update(&mut self, target: &Target, name: &str, mut object: Value) -> Result<Value, Failure> {
        if object["metadata"]["name"].as_str() != Some(name) {
            let message = "the name of the object does not match the name on the URL".to_owned();
            return Err(Failure::bad_request(message));
        }
        let current = match self.get(target, name) {
            Err(_) if target.kind == Kind::Lease => return self.create(target, object),
            found => found?,
        };
        let (kind, qualified) = (target.kind, target.kind.qualified());
        match object["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
            "" if kind == Kind::Lease => {
                let message = format!(
                    "{qualified} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be \
                     specified for an update"
                );
                return Err(Failure::new(422, "Invalid", message, Some((kind, name))));
            }
            sent if !sent.is_empty() && sent != current["metadata"]["resourceVersion"] => {
                let message = format!(
                    "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please \
                     apply your changes to the latest version and try again"
                );
                return Err(Failure::new(409, "Conflict", message, Some((kind, name))));
            }
            _ => {}
        }
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        let object = normalize(target, object);
        if object == current {
            return Ok(current);
        }
        Ok(self.write(target, name, object, "MODIFIED"))
    }

    pub(crate) fn delete(&mut self, target: &Target, name: &str) -> Result<Value, Failure> {
        let object = self.get(target, name)?;
        self.objects.remove(&target.key(name));
        Ok(self.record(target, name, object, "DELETED"))
    }

    /// The target's events after `after`, and the resourceVersion they bring a watch to; 410 Gone when the
    /// history no longer reaches back to `after`.
    pub(crate) fn events_after(&self, target: &Target, after: u64) -> Result<(Vec<Event>, u64), Failure> {
        if after < self.oldest_resumable {
            return Err(Failure::expired(after, self.oldest_resumable));
        }
        let events = self
            .history
            .iter()
            .filter(|e| e.resource_version > after && target.covers(&e.key))
            .cloned();
        Ok((events.collect(), self.resource_version))
    }

    /// Forget the history: a watch resumed from any resourceVersion before now gets 410 Gone.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.oldest_resumable = self.resource_version;
    }

    /// Store the object (normalized) and record the event.
    fn write(&mut self, target: &Target, name: &str, object: Value, kind_of_change: &'static str) -> Value {
        let object = self.record(target, name, normalize(target, object), kind_of_change);
        self.objects.insert(target.key(name), object.clone());
        object
    }

    /// Bump the resourceVersion, stamp it on `object`, and append the event to the bounded history.
    fn record(&mut self, target: &Target, name: &str, mut object: Value, kind_of_change: &'static str) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        if self.history.len() == HISTORY {
            let dropped = self.history.pop_front().expect("the history is full");
            self.oldest_resumable = dropped.resource_version;
        }
        self.history.push_back(Event {
            resource_version: self.resource_version,
            key: target.key(name),
            kind_of_change,
            object: object.clone(),
        });
        object
    }
}

/// The object as the API server stores it: type meta, namespace, a Secret's `stringData` merged into `data`
/// (base64) and its `type` defaulted.
fn normalize(target: &Target, mut object: Value) -> Value {
    let (api_version, kind) = target.kind.type_meta();
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    object["metadata"]["namespace"] = json!(target.namespace);
    if target.kind == Kind::Secret {
        if let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData")) {
            for (key, value) in strings {
                let encoded = STANDARD.encode(value.as_str().unwrap_or_default());
                object["data"][key] = json!(encoded);
            }
        }
        if object["type"].is_null() {
            object["type"] = json!("Opaque");
        }
    }
    object
}
