//! The settings kit: each stage declares its settings once, with
//! [`settings!`](crate::settings), and gets from that one declaration its
//! command-line flags (help text and default included), its config-file
//! keys, its defaults and the rule for SIGHUP.
//!
//! A setting is a field: its name, its type, its default, its flag (which is
//! also its config-file key, unless another key is named), the hint shown in
//! `--help`, and whether a reload changes it (`live`) or only a restart
//! (`restart`). Its type says how it is parsed, from the flag's text and
//! from a TOML value alike ([`Value`]); a `Vec<T>` is a repeatable flag and
//! a TOML array, a `bool` a switch. Adding a setting is one more field in
//! the stage's declaration and the code that uses it; nothing else.

use crate::text::printable;
use clap::builder::ValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

/// A value a setting can hold: parsed from the text of its flag, and from
/// its config-file key.
pub trait Value: Sized + Clone + Send + Sync + 'static {
    /// Parses the text of the flag (`--scan-window 2m`) or of a TOML string
    /// or number; the error names what was wrong, on one line.
    fn parse(text: &str) -> Result<Self, String>;

    /// The value as the flag takes it (`[default: …]` in `--help`).
    fn show(&self) -> String;

    /// How clap parses the flag; enums override it to list their values.
    fn value_parser() -> ValueParser {
        ValueParser::new(|text: &str| Self::parse(text))
    }

    /// The TOML type its config-file key takes; its text is then parsed
    /// like the flag's.
    const TOML: Toml = Toml::String;
}

/// The TOML types a setting's key may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toml {
    String,
    Integer,
    /// `max-blocks-per-minute = 60` or `= "off"`.
    IntegerOrString,
}

impl Toml {
    fn expected(self) -> &'static str {
        match self {
            Toml::String => "a string",
            Toml::Integer => "a whole number",
            Toml::IntegerOrString => "a whole number or a string",
        }
    }

    /// The text of `value` when it has this type.
    fn text(self, value: &toml::Value) -> Result<String, FileError> {
        match (self, value) {
            (Toml::String | Toml::IntegerOrString, toml::Value::String(s)) => Ok(s.clone()),
            (Toml::Integer | Toml::IntegerOrString, toml::Value::Integer(n)) => Ok(n.to_string()),
            (kind, other) => Err(FileError::Type(format!(
                "invalid type: {}, expected {}",
                describe(other),
                kind.expected()
            ))),
        }
    }
}

/// What is wrong with a config file: its syntax, a key or the TOML type of a
/// value (said with its line: `LINE: reason`), or a value itself (said with
/// its key: `key: reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    Type(String),
    Value(String),
}

impl FileError {
    /// The one-line error of file `path`: `PATH:LINE: reason` or `PATH:
    /// key: reason`.
    pub fn in_file(&self, path: &std::path::Path) -> String {
        match self {
            FileError::Type(e) => format!("{}:{e}", path.display()),
            FileError::Value(e) => format!("{}: {e}", path.display()),
        }
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Type(e) | FileError::Value(e) => f.write_str(e),
        }
    }
}

fn parse_as<T: Value>(value: &toml::Value) -> Result<T, FileError> {
    T::parse(&T::TOML.text(value)?).map_err(FileError::Value)
}

/// How a field of each type becomes a flag and a key: one value, a
/// repeatable one (`Vec<T>`), or a switch (`bool`).
pub trait Field: Sized + Clone + Send + Sync + 'static {
    fn arg(arg: Arg) -> Arg;
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self>;
    fn from_toml(value: &toml::Value) -> Result<Self, FileError>;
    /// What `--help` shows as the default, if anything.
    fn shown(&self) -> Option<String>;
}

impl<T: Value> Field for T {
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Set)
            .value_parser(T::value_parser())
            // `--max-blocks-per-minute -1` is a bad value of the flag, not
            // an unknown flag `-1`.
            .allow_negative_numbers(true)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<T>(id).cloned()
    }
    fn from_toml(value: &toml::Value) -> Result<Self, FileError> {
        parse_as(value)
    }
    fn shown(&self) -> Option<String> {
        Some(self.show())
    }
}

impl<T: Value> Field for Vec<T> {
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Append)
            .value_parser(T::value_parser())
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches
            .get_many::<T>(id)
            .map(|values| values.cloned().collect())
    }
    fn from_toml(value: &toml::Value) -> Result<Self, FileError> {
        match value {
            toml::Value::Array(items) => items.iter().map(parse_as).collect(),
            other => Err(FileError::Type(format!(
                "invalid type: {}, expected a list",
                describe(other)
            ))),
        }
    }
    fn shown(&self) -> Option<String> {
        (!self.is_empty()).then(|| {
            let shown: Vec<String> = self.iter().map(T::show).collect();
            shown.join(", ")
        })
    }
}

impl Field for bool {
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_flag(id).then_some(true)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, FileError> {
        match value {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(FileError::Type(format!(
                "invalid type: {}, expected true or false",
                describe(other)
            ))),
        }
    }
    fn shown(&self) -> Option<String> {
        None
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string \"{}\"", printable(s)),
        toml::Value::Integer(n) => format!("integer {n}"),
        toml::Value::Float(f) => format!("float {f}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "a list".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// The flag of one field, as [`settings!`](crate::settings) declares it.
pub fn arg<F: Field>(
    flag: &'static str,
    short: Option<char>,
    hint: &'static str,
    doc: &[&str],
    default: &F,
) -> Arg {
    let mut help = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    if let Some(shown) = default.shown() {
        help.push_str(&format!(" [default: {shown}]"));
    }
    let mut arg = F::arg(Arg::new(flag).long(flag).help(help));
    if !hint.is_empty() {
        arg = arg.value_name(hint);
    } else if arg.get_action().takes_values() {
        // As clap names a derived flag's value: `--source <SOURCE>`.
        arg = arg.value_name(flag.to_uppercase().replace('-', "_"));
    }
    if let Some(short) = short {
        arg = arg.short(short);
    }
    arg
}

/// The value of flag `id` when it was given on the command line.
pub fn given<F: Field>(matches: &ArgMatches, id: &str) -> Option<F> {
    if matches.value_source(id) != Some(ValueSource::CommandLine) {
        return None;
    }
    F::from_matches(matches, id)
}

/// A group of settings: one stage's, declared with
/// [`settings!`](crate::settings).
pub trait Group: Default + Clone + Send + Sync + 'static {
    /// Its config-file keys, in declaration order.
    const KEYS: &'static [&'static str];
    /// Adds its flags to `command`.
    fn args(command: Command) -> Command;
    /// Takes the flags given on the command line.
    fn apply_flags(&mut self, matches: &ArgMatches);
    /// Takes its keys out of a config file.
    fn apply_file(&mut self, file: &mut File) -> Result<(), FileError>;
    /// Takes the `live` settings of `new` (SIGHUP) and returns the names of
    /// the `restart` ones that differ.
    fn reload(&mut self, new: &Self) -> Vec<&'static str>;
}

/// A group's flags as the command line gave them, to apply over the
/// defaults and the config file ([`Flags::apply`]). Flattened into the
/// clap commands.
pub struct Flags<G> {
    matches: Option<ArgMatches>,
    group: PhantomData<fn() -> G>,
}

impl<G> Clone for Flags<G> {
    fn clone(&self) -> Self {
        Flags {
            matches: self.matches.clone(),
            group: PhantomData,
        }
    }
}

impl<G> Default for Flags<G> {
    fn default() -> Self {
        Flags {
            matches: None,
            group: PhantomData,
        }
    }
}

impl<G> std::fmt::Debug for Flags<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags").finish_non_exhaustive()
    }
}

impl<G: Group> Flags<G> {
    /// Sets in `group` every setting given on the command line.
    pub fn apply(&self, group: &mut G) {
        if let Some(matches) = &self.matches {
            group.apply_flags(matches);
        }
    }

    /// The defaults with the command line over them (no config file).
    pub fn resolve(&self) -> G {
        let mut group = G::default();
        self.apply(&mut group);
        group
    }
}

impl<G: Group> clap::FromArgMatches for Flags<G> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Flags {
            matches: Some(matches.clone()),
            group: PhantomData,
        })
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = Some(matches.clone());
        Ok(())
    }
}

impl<G: Group> clap::Args for Flags<G> {
    fn augment_args(command: Command) -> Command {
        G::args(command)
    }
    fn augment_args_for_update(command: Command) -> Command {
        G::args(command)
    }
}

/// A config file, parsed: its keys with their values and lines. Groups take
/// their keys out ([`File::take`]).
#[derive(Debug)]
pub struct File {
    /// Key -> its value and the line it is on.
    entries: BTreeMap<String, (toml::Value, usize)>,
}

impl File {
    /// Parses TOML text whose keys must be among `known`; an error reads
    /// `LINE: reason`.
    pub fn parse(text: &str, known: &[&str]) -> Result<File, FileError> {
        type Spanned<T> = toml::Spanned<T>;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| {
                let line = e.span().map(|span| line_of(span.start)).unwrap_or(1);
                FileError::Type(format!(
                    "{line}: {}",
                    printable(&e.message().trim().replace('\n', " "))
                ))
            })?;
        let mut entries = BTreeMap::new();
        let mut keys: Vec<_> = table.into_iter().collect();
        // Report the first unknown key of the file, not of the key order.
        keys.sort_by_key(|(key, _)| key.span().start);
        for (key, value) in keys {
            if !known.contains(&key.get_ref().as_str()) {
                let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                return Err(FileError::Type(format!(
                    "{}: unknown field `{}`, expected one of {}",
                    line_of(key.span().start),
                    printable(key.get_ref()),
                    expected.join(", ")
                )));
            }
            let line = line_of(value.span().start);
            entries.insert(key.into_inner(), (value.into_inner(), line));
        }
        Ok(File { entries })
    }

    /// The value of `key`, if the file sets it; an error reads `LINE:
    /// reason` for a value of the wrong TOML type, `key: reason` for a bad
    /// value.
    pub fn take<F: Field>(&mut self, key: &str) -> Result<Option<F>, FileError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some((value, line)) => F::from_toml(&value).map(Some).map_err(|e| match e {
                FileError::Type(reason) => FileError::Type(format!("{line}: {reason}")),
                FileError::Value(reason) => FileError::Value(format!("{key}: {reason}")),
            }),
        }
    }
}

/// Declares a group of settings (see the module docs):
///
/// ```ignore
/// settings! {
///     /// The scan detector's settings.
///     pub struct ScanSettings {
///         /// Alert when one remote IP touches MORE than N distinct local ports
///         scan_ports: usize = 3 => "scan-ports", "N", live;
///         /// Sliding window of the scan detector
///         scan_window: Duration = Duration::from_secs(60) => "scan-window", "DURATION", live;
///     }
/// }
/// ```
///
/// After `live`/`restart`, optional parts: `short 's'` (a short flag), `key
/// "name"` (a config-file key other than the flag).
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr => $flag:literal, $hint:literal, $reload:ident
                    $(, short $short:literal)? $(, key $key:literal)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $crate::setting::Group for $name {
            const KEYS: &'static [&'static str] = &[
                $( $crate::settings!(@key $flag $(, $key)?) ),*
            ];

            fn args(command: ::clap::Command) -> ::clap::Command {
                let defaults = Self::default();
                command $(
                    .arg($crate::setting::arg::<$ty>(
                        $flag,
                        $crate::settings!(@short $($short)?),
                        $hint,
                        &[$($doc),*],
                        &defaults.$field,
                    ))
                )*
            }

            fn apply_flags(&mut self, matches: &::clap::ArgMatches) {
                $(
                    if let Some(value) = $crate::setting::given::<$ty>(matches, $flag) {
                        self.$field = value;
                    }
                )*
            }

            fn apply_file(
                &mut self,
                file: &mut $crate::setting::File,
            ) -> Result<(), $crate::setting::FileError> {
                $(
                    if let Some(value) = file.take::<$ty>($crate::settings!(@key $flag $(, $key)?))? {
                        self.$field = value;
                    }
                )*
                Ok(())
            }

            fn reload(&mut self, new: &Self) -> Vec<&'static str> {
                #[allow(unused_mut)]
                let mut fixed = Vec::new();
                $(
                    $crate::settings!(@reload $reload, self.$field, new.$field, $flag, fixed);
                )*
                fixed
            }
        }
    };
    (@key $flag:literal) => { $flag };
    (@key $flag:literal, $key:literal) => { $key };
    (@short) => { None };
    (@short $short:literal) => { Some($short) };
    (@reload live, $old:expr, $new:expr, $flag:literal, $fixed:ident) => {
        $old = $new.clone();
    };
    (@reload restart, $old:expr, $new:expr, $flag:literal, $fixed:ident) => {
        if $old != $new {
            $fixed.push($flag);
        }
    };
}

// ---------------------------------------------------------------------------
// Values of the common types.

impl Value for Duration {
    /// DURATION: `500ms`, `10s`, `5m`, `1h`; zero is refused (periods and
    /// windows).
    fn parse(text: &str) -> Result<Self, String> {
        crate::duration::parse_positive(text)
    }
    fn show(&self) -> String {
        crate::duration::format(*self)
    }
}

impl Value for usize {
    const TOML: Toml = Toml::Integer;
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("'{}' is not a whole number", printable(text)))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl Value for std::path::PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty path".to_string());
        }
        Ok(std::path::PathBuf::from(text))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// A table size: at least 1 (a table that holds nothing detects nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity(pub usize);

impl Value for Capacity {
    const TOML: Toml = Toml::Integer;
    fn parse(text: &str) -> Result<Self, String> {
        match usize::parse(text)? {
            0 => Err("must be at least 1".to_string()),
            n => Ok(Capacity(n)),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

/// [`Value`] for an enum that clap knows ([`clap::ValueEnum`]): the flag
/// lists the possible values, the file takes the same words.
#[macro_export]
macro_rules! value_enum {
    ($ty:ty) => {
        impl $crate::setting::Value for $ty {
            fn parse(text: &str) -> Result<Self, String> {
                <$ty as ::clap::ValueEnum>::from_str(text, false).map_err(|_| {
                    let words: Vec<String> = <$ty as ::clap::ValueEnum>::value_variants()
                        .iter()
                        .filter_map(|v| ::clap::ValueEnum::to_possible_value(v))
                        .map(|p| p.get_name().to_string())
                        .collect();
                    format!(
                        "'{}' is not one of {}",
                        $crate::text::printable(text),
                        words.join(", ")
                    )
                })
            }
            fn show(&self) -> String {
                ::clap::ValueEnum::to_possible_value(self)
                    .map(|p| p.get_name().to_string())
                    .unwrap_or_default()
            }
            fn value_parser() -> ::clap::builder::ValueParser {
                ::clap::builder::EnumValueParser::<$ty>::new().into()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    enum Color {
        Red,
        Blue,
    }
    crate::value_enum!(Color);

    crate::settings! {
        /// A group to test the kit with.
        struct Demo {
            /// A window
            window: Duration = Duration::from_secs(60) => "window", "DURATION", live;
            /// A size
            size: Capacity = Capacity(8) => "size", "N", restart, short 'n';
            /// Colours
            color: Color = Color::Red => "color", "", restart;
            /// Names (repeatable)
            name: Vec<String> = Vec::new() => "name", "NAME", live, key "names";
            /// A switch
            loud: bool = false => "loud", "", restart;
        }
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        demo: Flags<Demo>,
    }

    fn flags(args: &[&str]) -> Result<Demo, String> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.render().to_string())?;
        Ok(cli.demo.resolve())
    }

    fn file(text: &str) -> Result<Demo, String> {
        let mut file = File::parse(text, Demo::KEYS).map_err(|e| e.to_string())?;
        let mut demo = Demo::default();
        demo.apply_file(&mut file).map_err(|e| e.to_string())?;
        Ok(demo)
    }

    #[test]
    fn flags_set_what_they_name_and_leave_the_defaults() {
        assert_eq!(flags(&[]).unwrap(), Demo::default());
        let demo = flags(&[
            "--window", "2m", "-n", "3", "--name", "a", "--name", "b", "--loud",
        ])
        .unwrap();
        assert_eq!(demo.window, Duration::from_secs(120));
        assert_eq!(demo.size, Capacity(3));
        assert_eq!(demo.name, ["a", "b"]);
        assert!(demo.loud);
        assert_eq!(demo.color, Color::Red);
    }

    #[test]
    fn bad_flag_values_name_the_flag_and_the_value() {
        let err = flags(&["--size", "0"]).unwrap_err();
        assert!(
            err.contains("--size") && err.contains("must be at least 1"),
            "{err}"
        );
        let err = flags(&["--color", "green"]).unwrap_err();
        assert!(err.contains("--color") && err.contains("green"), "{err}");
        let err = flags(&["--size", "-1"]).unwrap_err();
        assert!(err.contains("--size") && err.contains("-1"), "{err}");
    }

    #[test]
    fn help_shows_each_default_once() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        assert!(help.contains("A window [default: 1m]"), "{help}");
        assert!(help.contains("--color <COLOR>"), "{help}");
        assert!(help.contains("A size [default: 8]"), "{help}");
        assert!(help.contains("Colours [default: red]"), "{help}");
        assert!(!help.contains("Names (repeatable) [default"), "{help}");
    }

    #[test]
    fn the_file_takes_the_same_values_under_its_keys() {
        let demo =
            file("window = \"5s\"\nsize = 4\ncolor = \"blue\"\nnames = [\"x\"]\nloud = true\n")
                .unwrap();
        assert_eq!(
            demo,
            Demo {
                window: Duration::from_secs(5),
                size: Capacity(4),
                color: Color::Blue,
                name: vec!["x".to_string()],
                loud: true
            }
        );
    }

    #[test]
    fn file_errors_name_the_line_or_the_key() {
        let err = file("window = \"5s\"\n\nname = [\"x\"]\n").unwrap_err();
        assert!(err.starts_with("3: unknown field `name`"), "{err}");
        let err = file("window = \n").unwrap_err();
        assert!(err.starts_with("1: "), "{err}");
        assert_eq!(file("size = 0\n").unwrap_err(), "size: must be at least 1");
        assert_eq!(
            file("window = \"60\\t\"\n").unwrap_err(),
            "window: '60\\t': unknown unit '\\t' (use ms, s, m or h)"
        );
        assert_eq!(
            file("loud = 1\n").unwrap_err(),
            "1: invalid type: integer 1, expected true or false"
        );
        assert_eq!(
            file("\nnames = \"x\"\n").unwrap_err(),
            "2: invalid type: string \"x\", expected a list"
        );
        assert_eq!(
            file("size = \"3\"\n").unwrap_err(),
            "1: invalid type: string \"3\", expected a whole number"
        );
        assert_eq!(
            file("color = \"green\"\n").unwrap_err(),
            "color: 'green' is not one of red, blue"
        );
        assert_eq!(
            file("size = 1.5\n").unwrap_err(),
            "1: invalid type: float 1.5, expected a whole number"
        );
    }

    #[test]
    fn a_reload_takes_the_live_settings_and_names_the_others() {
        let mut running = Demo::default();
        let new = Demo {
            window: Duration::from_secs(5),
            size: Capacity(2),
            name: vec!["n".into()],
            loud: true,
            ..Demo::default()
        };
        assert_eq!(running.reload(&new), ["size", "loud"]);
        assert_eq!(running.window, Duration::from_secs(5));
        assert_eq!(running.name, ["n"]);
        assert_eq!(running.size, Capacity(8), "restart-only: kept");
    }
}
