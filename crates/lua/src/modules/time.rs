//! `time` (SPEC §6.3), the Rust half: Time and Duration values, Go duration syntax, Go
//! reference layouts for `format`/`parse`, locations (UTC, Local, fixed zones), and the
//! timer commands the prelude's `sleep`/`after`/`timer`/`ticker` yield.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Datelike, FixedOffset, Local, NaiveDate, Offset, TimeZone, Timelike};
use mlua::{FromLua, Lua, MetaMethod, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_registry::{format_duration, parse_duration};
use wippy_runtime::{Command, Error};

use super::{bad_arg, fail};
use crate::current;

pub(crate) const NANOS_PER_SEC: i64 = 1_000_000_000;
const NS: i128 = NANOS_PER_SEC as i128;
/// Go's zero Time (January 1, year 1, 00:00:00 UTC) in unix nanoseconds: what `is_zero`
/// compares with and what `round`/`truncate` count multiples from.
const ZERO_TIME: i128 = -62_135_596_800 * NS;

/// A span of time in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Duration(pub i64);

/// An instant with a location: unix nanoseconds plus the zone it is shown in. 128 bits,
/// as Go's Time covers far more than an i64 of nanoseconds does (1677-2262): a parsed
/// time of day with no date is in year 0.
#[derive(Clone, Debug)]
pub struct Time {
    pub nanos: i128,
    pub loc: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    Utc,
    Local,
    Fixed(String, i32),
    /// An IANA zone from the tz database compiled into the binary (chrono-tz).
    Zone(chrono_tz::Tz),
}

impl Location {
    fn name(&self) -> String {
        match self {
            Location::Utc => "UTC".into(),
            Location::Local => "Local".into(),
            Location::Fixed(n, _) => n.clone(),
            Location::Zone(z) => z.name().to_string(),
        }
    }
    fn offset_at(&self, nanos: i128) -> i32 {
        match self {
            Location::Utc => 0,
            Location::Fixed(_, o) => *o,
            Location::Zone(z) => {
                let dt = DateTime::from_timestamp(secs_of(nanos), 0).unwrap_or_default();
                z.offset_from_utc_datetime(&dt.naive_utc()).fix().local_minus_utc()
            }
            Location::Local => {
                let dt = DateTime::from_timestamp(secs_of(nanos), 0).unwrap_or_default();
                Local.offset_from_utc_datetime(&dt.naive_utc()).fix().local_minus_utc()
            }
        }
    }
}

impl UserData for Location {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("string", |_, l, ()| Ok(l.name()));
        m.add_meta_method(MetaMethod::ToString, |_, l, ()| Ok(l.name()));
    }
}

/// Whole unix seconds of unix nanoseconds (clamped to what chrono can show).
fn secs_of(nanos: i128) -> i64 {
    nanos.div_euclid(NS).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// An i128 clamped into an i64 (Go saturates a Duration the same way).
fn sat64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Time {
    fn fixed(&self) -> DateTime<FixedOffset> {
        let off = FixedOffset::east_opt(self.loc.offset_at(self.nanos)).unwrap_or(FixedOffset::east_opt(0).unwrap());
        let ns = self.nanos.rem_euclid(NS) as u32;
        DateTime::from_timestamp(secs_of(self.nanos), ns).unwrap_or_default().with_timezone(&off)
    }
    fn zone_abbrev(&self) -> String {
        match &self.loc {
            Location::Utc => "UTC".into(),
            Location::Fixed(n, _) => n.clone(),
            Location::Zone(z) => {
                let dt = DateTime::from_timestamp(secs_of(self.nanos), 0).unwrap_or_default();
                let off = z.offset_from_utc_datetime(&dt.naive_utc());
                match chrono_tz::OffsetName::abbreviation(&off) {
                    Some(a) => a.to_string(),
                    None => format_offset(off.fix().local_minus_utc(), false, false),
                }
            }
            Location::Local => {
                let o = self.loc.offset_at(self.nanos);
                if o == 0 {
                    "UTC".into()
                } else {
                    format_offset(o, true, false)
                }
            }
        }
    }
}

/// The offset of `loc` for a wall-clock time there (the earlier one in a fold; a time in a
/// gap is taken with the offset before it).
fn local_offset(loc: &Location, naive: &chrono::NaiveDateTime) -> i32 {
    match loc {
        Location::Utc => 0,
        Location::Fixed(_, o) => *o,
        Location::Local => Local.from_local_datetime(naive).earliest().map(|d| d.offset().fix().local_minus_utc()).unwrap_or_else(|| {
            Local.offset_from_utc_datetime(naive).fix().local_minus_utc()
        }),
        Location::Zone(z) => z
            .from_local_datetime(naive)
            .earliest()
            .map(|d| d.offset().fix().local_minus_utc())
            .unwrap_or_else(|| z.offset_from_utc_datetime(naive).fix().local_minus_utc()),
    }
}

fn format_offset(secs: i32, colon: bool, z: bool) -> String {
    if z && secs == 0 {
        return "Z".into();
    }
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.abs();
    if colon {
        format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
    } else {
        format!("{sign}{:02}{:02}", a / 3600, (a % 3600) / 60)
    }
}

/// A duration argument: nanoseconds (number), Go syntax (string), or a Duration.
pub(crate) fn duration_arg(v: &LuaValue, n: usize, f: &str) -> mlua::Result<Result<i64, Error>> {
    match v {
        LuaValue::Integer(i) => Ok(Ok(*i)),
        LuaValue::Number(x) => Ok(Ok(*x as i64)),
        LuaValue::String(s) => Ok(parse_duration(&s.to_string_lossy()).map_err(Error::invalid)),
        LuaValue::UserData(ud) => match ud.borrow::<Duration>() {
            Ok(d) => Ok(Ok(d.0)),
            Err(_) => Err(bad_arg(n, f, "duration", v)),
        },
        other => Err(bad_arg(n, f, "duration", other)),
    }
}

impl FromLua for Duration {
    fn from_lua(v: LuaValue, _: &Lua) -> mlua::Result<Duration> {
        match duration_arg(&v, 1, "duration")? {
            Ok(d) => Ok(Duration(d)),
            Err(e) => Err(mlua::Error::runtime(e.message)),
        }
    }
}

impl UserData for Duration {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("nanoseconds", |_, d, ()| Ok(d.0));
        m.add_method("microseconds", |_, d, ()| Ok(d.0 / 1_000));
        m.add_method("milliseconds", |_, d, ()| Ok(d.0 / 1_000_000));
        m.add_method("seconds", |_, d, ()| Ok(d.0 as f64 / 1e9));
        m.add_method("minutes", |_, d, ()| Ok(d.0 as f64 / 60e9));
        m.add_method("hours", |_, d, ()| Ok(d.0 as f64 / 3600e9));
        m.add_method("string", |_, d, ()| Ok(format_duration(d.0)));
        m.add_meta_method(MetaMethod::ToString, |_, d, ()| Ok(format_duration(d.0)));
        m.add_meta_method(MetaMethod::Eq, |_, a, b: Duration| Ok(a.0 == b.0));
        m.add_meta_method(MetaMethod::Lt, |_, a, b: Duration| Ok(a.0 < b.0));
        m.add_meta_method(MetaMethod::Le, |_, a, b: Duration| Ok(a.0 <= b.0));
        m.add_meta_method(MetaMethod::Add, |_, a, b: Duration| Ok(Duration(a.0.saturating_add(b.0))));
        m.add_meta_method(MetaMethod::Sub, |_, a, b: Duration| Ok(Duration(a.0.saturating_sub(b.0))));
    }
}

fn time_arg(v: &LuaValue, n: usize, f: &str) -> mlua::Result<Time> {
    match v {
        LuaValue::UserData(ud) => ud.borrow::<Time>().map(|t| t.clone()).map_err(|_| bad_arg(n, f, "time", v)),
        other => Err(bad_arg(n, f, "time", other)),
    }
}

impl FromLua for Time {
    fn from_lua(v: LuaValue, _: &Lua) -> mlua::Result<Time> {
        time_arg(&v, 1, "time")
    }
}

fn with_loc(nanos: i128, loc: &Location) -> Time {
    Time { nanos, loc: loc.clone() }
}

impl UserData for Time {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("unix", |_, t, ()| Ok(secs_of(t.nanos)));
        m.add_method("unix_nano", |_, t, ()| Ok(sat64(t.nanos)));
        m.add_method("unix_milli", |_, t, ()| Ok(sat64(t.nanos.div_euclid(1_000_000))));
        m.add_method("add", |_, t, d: Duration| Ok(with_loc(t.nanos + d.0 as i128, &t.loc)));
        m.add_method("sub", |_, t, o: Time| Ok(Duration(sat64(t.nanos - o.nanos))));
        m.add_method("before", |_, t, o: Time| Ok(t.nanos < o.nanos));
        m.add_method("after", |_, t, o: Time| Ok(t.nanos > o.nanos));
        m.add_method("equal", |_, t, o: Time| Ok(t.nanos == o.nanos));
        m.add_method("is_zero", |_, t, ()| Ok(t.nanos == ZERO_TIME));
        m.add_method("year", |_, t, ()| Ok(t.fixed().year()));
        m.add_method("month", |_, t, ()| Ok(t.fixed().month()));
        m.add_method("day", |_, t, ()| Ok(t.fixed().day()));
        m.add_method("hour", |_, t, ()| Ok(t.fixed().hour()));
        m.add_method("minute", |_, t, ()| Ok(t.fixed().minute()));
        m.add_method("second", |_, t, ()| Ok(t.fixed().second()));
        m.add_method("nanosecond", |_, t, ()| Ok(t.nanos.rem_euclid(NS) as i64));
        m.add_method("weekday", |_, t, ()| Ok(t.fixed().weekday().num_days_from_sunday()));
        m.add_method("year_day", |_, t, ()| Ok(t.fixed().ordinal()));
        m.add_method("date", |_, t, ()| {
            let f = t.fixed();
            Ok((f.year(), f.month(), f.day()))
        });
        m.add_method("clock", |_, t, ()| {
            let f = t.fixed();
            Ok((f.hour(), f.minute(), f.second()))
        });
        m.add_method("utc", |_, t, ()| Ok(with_loc(t.nanos, &Location::Utc)));
        m.add_method("local", |_, t, ()| Ok(with_loc(t.nanos, &Location::Local)));
        m.add_method("in_local", |_, t, ()| Ok(with_loc(t.nanos, &Location::Local)));
        m.add_method("in_location", |_, t, l: mlua::AnyUserData| {
            let loc = l.borrow::<Location>()?.clone();
            Ok(with_loc(t.nanos, &loc))
        });
        m.add_method("location", |_, t, ()| Ok(t.loc.clone()));
        m.add_method("add_date", |_, t, (y, mo, d): (i32, i32, i64)| {
            let f = t.fixed();
            let total_months = f.year() * 12 + (f.month0() as i32) + y * 12 + mo;
            let (ny, nm) = (total_months.div_euclid(12), total_months.rem_euclid(12) as u32 + 1);
            let first = NaiveDate::from_ymd_opt(ny, nm, 1).ok_or_else(|| mlua::Error::runtime("add_date: date out of range"))?;
            let date = first + chrono::Duration::days(f.day() as i64 - 1 + d);
            let naive = date.and_time(f.time());
            let dt = f.offset().from_local_datetime(&naive).single().ok_or_else(|| mlua::Error::runtime("add_date: invalid date"))?;
            let nanos = dt.timestamp() as i128 * NS + dt.timestamp_subsec_nanos() as i128;
            Ok(with_loc(nanos, &t.loc))
        });
        m.add_method("truncate", |_, t, d: Duration| {
            if d.0 <= 0 {
                return Ok(t.clone());
            }
            // (multiples since Go's zero time, as Go counts them)
            Ok(with_loc(t.nanos - (t.nanos - ZERO_TIME).rem_euclid(d.0 as i128), &t.loc))
        });
        m.add_method("round", |_, t, d: Duration| {
            if d.0 <= 0 {
                return Ok(t.clone());
            }
            let (d, r) = (d.0 as i128, (t.nanos - ZERO_TIME).rem_euclid(d.0 as i128));
            let down = t.nanos - r;
            Ok(with_loc(if r + r < d { down } else { down + d }, &t.loc))
        });
        m.add_method("format", |_, t, layout: String| Ok(format_go(t, &layout)));
        m.add_method("format_rfc3339", |_, t, ()| Ok(format_go(t, RFC3339)));
        m.add_meta_method(MetaMethod::ToString, |_, t, ()| Ok(format_go(t, "2006-01-02 15:04:05.999999999 -0700 MST")));
        m.add_meta_method(MetaMethod::Eq, |_, a, b: Time| Ok(a.nanos == b.nanos));
        m.add_meta_method(MetaMethod::Lt, |_, a, b: Time| Ok(a.nanos < b.nanos));
        m.add_meta_method(MetaMethod::Le, |_, a, b: Time| Ok(a.nanos <= b.nanos));
    }
}

pub const RFC3339: &str = "2006-01-02T15:04:05Z07:00";
const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// One element of a Go layout.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(String),
    Year4,
    Year2,
    MonthLong,
    MonthShort,
    Month2,
    Month1,
    DayLong,
    DayShort,
    Day2,
    Day1,
    DayUnder,
    YearDay3,
    Hour24,
    Hour12_2,
    Hour12,
    Min2,
    Min1,
    Sec2,
    Sec1,
    PmUpper,
    PmLower,
    ZoneName,
    Off(bool, bool, bool), // colon, z, seconds-less only
    Frac(usize, bool),     // digits, trim zeros (9s)
}

fn tokenize(layout: &str) -> Vec<Tok> {
    const TABLE: &[(&str, Tok)] = &[
        ("January", Tok::MonthLong),
        ("Monday", Tok::DayLong),
        ("Z07:00", Tok::Off(true, true, false)),
        ("-07:00", Tok::Off(true, false, false)),
        ("Z0700", Tok::Off(false, true, false)),
        ("-0700", Tok::Off(false, false, false)),
        ("2006", Tok::Year4),
        ("Jan", Tok::MonthShort),
        ("Mon", Tok::DayShort),
        ("MST", Tok::ZoneName),
        ("002", Tok::YearDay3),
        ("-07", Tok::Off(false, false, true)),
        ("Z07", Tok::Off(false, true, true)),
        ("01", Tok::Month2),
        ("02", Tok::Day2),
        ("_2", Tok::DayUnder),
        ("15", Tok::Hour24),
        ("03", Tok::Hour12_2),
        ("04", Tok::Min2),
        ("05", Tok::Sec2),
        ("06", Tok::Year2),
        ("PM", Tok::PmUpper),
        ("pm", Tok::PmLower),
        ("1", Tok::Month1),
        ("2", Tok::Day1),
        ("3", Tok::Hour12),
        ("4", Tok::Min1),
        ("5", Tok::Sec1),
    ];
    let mut out = Vec::new();
    let mut lit = String::new();
    let b = layout.as_bytes();
    let mut i = 0;
    'outer: while i < layout.len() {
        // fractional seconds: .000 / ,000 / .999 after a seconds field
        if (b[i] == b'.' || b[i] == b',') && i + 1 < b.len() && (b[i + 1] == b'0' || b[i + 1] == b'9') {
            let d = b[i + 1];
            let mut j = i + 1;
            while j < b.len() && b[j] == d {
                j += 1;
            }
            let prev_sec = matches!(out.last(), Some(Tok::Sec2) | Some(Tok::Sec1)) && lit.is_empty();
            if prev_sec && (j >= b.len() || !b[j].is_ascii_digit()) {
                out.push(Tok::Frac(j - i - 1, d == b'9'));
                i = j;
                continue;
            }
        }
        for (pat, tok) in TABLE {
            if layout[i..].starts_with(pat) {
                if !lit.is_empty() {
                    out.push(Tok::Lit(std::mem::take(&mut lit)));
                }
                out.push(tok.clone());
                i += pat.len();
                continue 'outer;
            }
        }
        let ch = layout[i..].chars().next().unwrap();
        lit.push(ch);
        i += ch.len_utf8();
    }
    if !lit.is_empty() {
        out.push(Tok::Lit(lit));
    }
    out
}

pub(crate) fn format_go(t: &Time, layout: &str) -> String {
    let f = t.fixed();
    let off = t.loc.offset_at(t.nanos);
    let mut s = String::new();
    for tok in tokenize(layout) {
        match tok {
            Tok::Lit(l) => s.push_str(&l),
            Tok::Year4 => s.push_str(&format!("{:04}", f.year())),
            Tok::Year2 => s.push_str(&format!("{:02}", f.year().rem_euclid(100))),
            Tok::MonthLong => s.push_str(MONTHS[f.month0() as usize]),
            Tok::MonthShort => s.push_str(&MONTHS[f.month0() as usize][..3]),
            Tok::Month2 => s.push_str(&format!("{:02}", f.month())),
            Tok::Month1 => s.push_str(&f.month().to_string()),
            Tok::DayLong => s.push_str(DAYS[f.weekday().num_days_from_sunday() as usize]),
            Tok::DayShort => s.push_str(&DAYS[f.weekday().num_days_from_sunday() as usize][..3]),
            Tok::Day2 => s.push_str(&format!("{:02}", f.day())),
            Tok::Day1 => s.push_str(&f.day().to_string()),
            Tok::DayUnder => s.push_str(&format!("{:>2}", f.day())),
            Tok::YearDay3 => s.push_str(&format!("{:03}", f.ordinal())),
            Tok::Hour24 => s.push_str(&format!("{:02}", f.hour())),
            Tok::Hour12_2 => s.push_str(&format!("{:02}", h12(f.hour()))),
            Tok::Hour12 => s.push_str(&h12(f.hour()).to_string()),
            Tok::Min2 => s.push_str(&format!("{:02}", f.minute())),
            Tok::Min1 => s.push_str(&f.minute().to_string()),
            Tok::Sec2 => s.push_str(&format!("{:02}", f.second())),
            Tok::Sec1 => s.push_str(&f.second().to_string()),
            Tok::PmUpper => s.push_str(if f.hour() >= 12 { "PM" } else { "AM" }),
            Tok::PmLower => s.push_str(if f.hour() >= 12 { "pm" } else { "am" }),
            Tok::ZoneName => s.push_str(&t.zone_abbrev()),
            Tok::Off(colon, z, short) => {
                let o = format_offset(off, colon, z);
                if short && o != "Z" {
                    s.push_str(&o[..3]);
                } else {
                    s.push_str(&o);
                }
            }
            Tok::Frac(n, trim) => {
                let ns = format!("{:09}", t.nanos.rem_euclid(NS));
                let mut digits = ns[..n.min(9)].to_string();
                if trim {
                    digits = digits.trim_end_matches('0').to_string();
                    if !digits.is_empty() {
                        s.push('.');
                        s.push_str(&digits);
                    }
                } else {
                    s.push('.');
                    s.push_str(&digits);
                }
            }
        }
    }
    s
}

fn h12(h: u32) -> u32 {
    match h % 12 {
        0 => 12,
        x => x,
    }
}

/// Parse `value` with a Go layout (Go's `ParseInLocation`): what the layout leaves out is
/// zero, or one where zero is impossible (a time of day alone is on January 1 of year 0).
/// A "Z" or "UTC" in the value gives UTC; an offset or zone name that `loc` has at that
/// time gives `loc`; another offset a fixed zone; another zone name a fixed zone of that
/// name at offset 0, as Go does. Without a zone in the value, `loc` applies.
pub(crate) fn parse_go(layout: &str, value: &str, loc: &Location) -> Result<Time, String> {
    let bad = |why: &str| format!("parsing time \"{value}\" as \"{layout}\": {why}");
    let (mut year, mut month, mut day, mut hour, mut min, mut sec, mut nanos) = (0i32, 1u32, 1u32, 0u32, 0u32, 0u32, 0i64);
    let mut pm: Option<bool> = None;
    let mut offset: Option<i32> = None;
    let mut utc = false;
    let mut zone_name: Option<String> = None;
    let mut yday: Option<u32> = None;
    let mut v = value;
    fn num<'a>(v: &'a str, min: usize, max: usize) -> Option<(i64, &'a str)> {
        let n = v.bytes().take(max).take_while(|b| b.is_ascii_digit()).count();
        if n < min {
            return None;
        }
        Some((v[..n].parse().ok()?, &v[n..]))
    }
    let toks = tokenize(layout);
    for (idx, tok) in toks.iter().enumerate() {
        macro_rules! take {
            ($min:expr, $max:expr, $what:expr) => {{
                let (n, rest) = num(v, $min, $max).ok_or_else(|| bad(&format!("cannot parse {:?} as {}", v, $what)))?;
                v = rest;
                n
            }};
        }
        match tok {
            Tok::Lit(l) => {
                v = v.strip_prefix(l.as_str()).ok_or_else(|| bad(&format!("cannot parse {v:?} as {l:?}")))?;
            }
            Tok::Year4 => year = take!(4, 4, "2006") as i32,
            Tok::Year2 => {
                let y = take!(2, 2, "06") as i32;
                year = if y >= 69 { 1900 + y } else { 2000 + y };
            }
            Tok::MonthLong | Tok::MonthShort => {
                let found = MONTHS.iter().enumerate().find_map(|(i, m)| {
                    let name = if *tok == Tok::MonthLong { *m } else { &m[..3] };
                    v.get(..name.len()).filter(|p| p.eq_ignore_ascii_case(name)).map(|_| (i, name.len()))
                });
                let (i, n) = found.ok_or_else(|| bad("month name"))?;
                month = i as u32 + 1;
                v = &v[n..];
            }
            Tok::Month2 => month = take!(2, 2, "01") as u32,
            Tok::Month1 => month = take!(1, 2, "1") as u32,
            Tok::DayLong | Tok::DayShort => {
                let found = DAYS.iter().find_map(|d| {
                    let name = if *tok == Tok::DayLong { *d } else { &d[..3] };
                    v.get(..name.len()).filter(|p| p.eq_ignore_ascii_case(name)).map(|_| name.len())
                });
                v = &v[found.ok_or_else(|| bad("day name"))?..];
            }
            Tok::Day2 => day = take!(2, 2, "02") as u32,
            Tok::Day1 => day = take!(1, 2, "2") as u32,
            Tok::DayUnder => {
                v = v.strip_prefix(' ').unwrap_or(v);
                day = take!(1, 2, "_2") as u32;
            }
            Tok::YearDay3 => yday = Some(take!(3, 3, "002") as u32),
            Tok::Hour24 => hour = take!(2, 2, "15") as u32,
            Tok::Hour12_2 => hour = take!(2, 2, "03") as u32,
            Tok::Hour12 => hour = take!(1, 2, "3") as u32,
            Tok::Min2 => min = take!(2, 2, "04") as u32,
            Tok::Min1 => min = take!(1, 2, "4") as u32,
            Tok::Sec2 | Tok::Sec1 => {
                sec = if *tok == Tok::Sec2 { take!(2, 2, "05") } else { take!(1, 2, "5") } as u32;
                // Go accepts fractional seconds after a seconds field even if the layout
                // has none.
                let next_is_frac = matches!(toks.get(idx + 1), Some(Tok::Frac(..)));
                if !next_is_frac && (v.starts_with('.') || v.starts_with(',')) && v[1..].starts_with(|c: char| c.is_ascii_digit()) {
                    let (n, digits, rest) = frac_digits(&v[1..]);
                    nanos = n;
                    let _ = digits;
                    v = rest;
                }
            }
            Tok::Frac(n, trim) => {
                if v.starts_with('.') || v.starts_with(',') {
                    let (ns, digits, rest) = frac_digits(&v[1..]);
                    if !trim && digits != *n {
                        return Err(bad("fractional second"));
                    }
                    nanos = ns;
                    v = rest;
                } else if !trim {
                    return Err(bad("fractional second"));
                }
            }
            Tok::PmUpper | Tok::PmLower => {
                let p = v.get(..2).ok_or_else(|| bad("AM/PM"))?.to_ascii_uppercase();
                pm = Some(match p.as_str() {
                    "PM" => true,
                    "AM" => false,
                    _ => return Err(bad("AM/PM")),
                });
                v = &v[2..];
            }
            Tok::ZoneName => {
                let n = v.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
                if n < 3 {
                    return Err(bad("time zone name"));
                }
                match &v[..n] {
                    "UTC" => utc = true,
                    name => zone_name = Some(name.to_string()),
                }
                v = &v[n..];
            }
            Tok::Off(colon, z, short) => {
                if *z && v.starts_with('Z') {
                    utc = true;
                    v = &v[1..];
                    continue;
                }
                let sign = match v.as_bytes().first() {
                    Some(b'+') => 1,
                    Some(b'-') => -1,
                    _ => return Err(bad("time zone offset")),
                };
                v = &v[1..];
                let h = take!(2, 2, "-07") as i32;
                let mut m = 0;
                if !short {
                    if *colon {
                        v = v.strip_prefix(':').ok_or_else(|| bad("time zone offset"))?;
                    }
                    m = take!(2, 2, "-0700") as i32;
                }
                offset = Some(sign * (h * 3600 + m * 60));
            }
        }
    }
    if !v.is_empty() {
        return Err(bad(&format!("extra text: {v:?}")));
    }
    if let Some(p) = pm {
        if hour > 12 {
            return Err(bad("hour out of range"));
        }
        if p && hour < 12 {
            hour += 12;
        } else if !p && hour == 12 {
            hour = 0;
        }
    }
    let date = match yday {
        Some(d) => NaiveDate::from_yo_opt(year, d),
        None => NaiveDate::from_ymd_opt(year, month, day),
    }
    .ok_or_else(|| bad("day out of range"))?;
    let naive = date.and_hms_opt(hour, min, sec).ok_or_else(|| bad("time out of range"))?;
    let wall = naive.and_utc().timestamp();
    let (off, loc) = if utc {
        (0, Location::Utc)
    } else if let Some(o) = offset {
        // the default location when it has this offset at that instant (Go's rule)
        let at = (wall - o as i64) as i128 * NS;
        if loc.offset_at(at) == o && zone_name.as_ref().is_none_or(|n| *n == with_loc(at, loc).zone_abbrev()) {
            (o, loc.clone())
        } else {
            (o, Location::Fixed(zone_name.unwrap_or_else(|| format_offset(o, false, false)), o))
        }
    } else if let Some(name) = zone_name {
        let off = local_offset(loc, &naive);
        let at = (wall - off as i64) as i128 * NS;
        if with_loc(at, loc).zone_abbrev() == name {
            (off, loc.clone())
        } else {
            (0, Location::Fixed(name, 0))
        }
    } else {
        (local_offset(loc, &naive), loc.clone())
    };
    let secs = wall - off as i64;
    Ok(Time { nanos: secs as i128 * NS + nanos as i128, loc })
}

fn frac_digits(v: &str) -> (i64, usize, &str) {
    let n = v.bytes().take_while(|b| b.is_ascii_digit()).count();
    let digits = &v[..n];
    let mut padded = digits.chars().take(9).collect::<String>();
    while padded.len() < 9 {
        padded.push('0');
    }
    (padded.parse().unwrap_or(0), n, &v[n..])
}

pub(crate) fn now_nanos() -> i64 {
    wippy_runtime::unix_nanos()
}

fn location_arg(v: &LuaValue) -> mlua::Result<Option<Location>> {
    match v {
        LuaValue::Nil => Ok(None),
        LuaValue::UserData(ud) => Ok(Some(ud.borrow::<Location>()?.clone())),
        other => Err(bad_arg(1, "location", "location", other)),
    }
}

pub(crate) fn library(lua: &Lua, r: &Table) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, v) in [
        ("NANOSECOND", 1i64),
        ("MICROSECOND", 1_000),
        ("MILLISECOND", 1_000_000),
        ("SECOND", NANOS_PER_SEC),
        ("MINUTE", 60 * NANOS_PER_SEC),
        ("HOUR", 3600 * NANOS_PER_SEC),
    ] {
        t.raw_set(name, v)?;
    }
    t.raw_set("RFC3339", RFC3339)?;
    t.raw_set("RFC3339NANO", "2006-01-02T15:04:05.999999999Z07:00")?;
    t.raw_set("DATE_TIME", "2006-01-02 15:04:05")?;
    t.raw_set("DATE_ONLY", "2006-01-02")?;
    t.raw_set("TIME_ONLY", "15:04:05")?;
    t.raw_set("KITCHEN", "3:04PM")?;
    for (name, layout) in [
        ("RFC822", "02 Jan 06 15:04 MST"),
        ("RFC822Z", "02 Jan 06 15:04 -0700"),
        ("RFC850", "Monday, 02-Jan-06 15:04:05 MST"),
        ("RFC1123", "Mon, 02 Jan 2006 15:04:05 MST"),
        ("RFC1123Z", "Mon, 02 Jan 2006 15:04:05 -0700"),
        ("STAMP", "Jan _2 15:04:05"),
        ("STAMP_MILLI", "Jan _2 15:04:05.000"),
        ("STAMP_MICRO", "Jan _2 15:04:05.000000"),
        ("STAMP_NANO", "Jan _2 15:04:05.000000000"),
    ] {
        t.raw_set(name, layout)?;
    }
    for (i, m) in MONTHS.iter().enumerate() {
        t.raw_set(m.to_uppercase(), i as i64 + 1)?;
    }
    for (i, d) in DAYS.iter().enumerate() {
        t.raw_set(d.to_uppercase(), i as i64)?;
    }
    t.raw_set("utc", lua.create_userdata(Location::Utc)?)?;
    t.raw_set("localtz", lua.create_userdata(Location::Local)?)?;
    t.raw_set("now", lua.create_function(|_, ()| Ok(Time { nanos: now_nanos() as i128, loc: Location::Local }))?)?;
    t.raw_set(
        "unix",
        lua.create_function(|_, (s, ns): (i64, Option<i64>)| {
            Ok(Time { nanos: s as i128 * NS + ns.unwrap_or(0) as i128, loc: Location::Local })
        })?,
    )?;
    t.raw_set(
        "date",
        lua.create_function(|lua, (y, mo, d, h, mi, s, ns, loc): (i32, u32, u32, Option<u32>, Option<u32>, Option<u32>, Option<i64>, LuaValue)| {
            let loc = location_arg(&loc)?.unwrap_or(Location::Local);
            let Some(date) = NaiveDate::from_ymd_opt(y, mo, d) else {
                return fail(lua, Error::invalid(format!("time.date: invalid date {y}-{mo}-{d}")));
            };
            let Some(naive) = date.and_hms_opt(h.unwrap_or(0), mi.unwrap_or(0), s.unwrap_or(0)) else {
                return fail(lua, Error::invalid("time.date: invalid time of day"));
            };
            let off = local_offset(&loc, &naive);
            let nanos = (naive.and_utc().timestamp() - off as i64) as i128 * NS + ns.unwrap_or(0) as i128;
            Ok((LuaValue::UserData(lua.create_userdata(Time { nanos, loc })?), LuaValue::Nil))
        })?,
    )?;
    t.raw_set(
        "parse_duration",
        lua.create_function(|lua, v: LuaValue| {
            // a number (nanoseconds), a Go duration string or a Duration (SPEC §12.3)
            let d = match &v {
                LuaValue::Integer(_) | LuaValue::Number(_) | LuaValue::String(_) => duration_arg(&v, 1, "parse_duration")?,
                LuaValue::UserData(ud) if ud.borrow::<Duration>().is_ok() => duration_arg(&v, 1, "parse_duration")?,
                other => Err(Error::invalid(format!("time.parse_duration: a duration expected, got {}", super::lua_type(other)))),
            };
            match d {
                Ok(d) => Ok((LuaValue::UserData(lua.create_userdata(Duration(d))?), LuaValue::Nil)),
                Err(e) if e.message.starts_with("time.parse_duration") => fail(lua, e),
                Err(e) => fail(lua, Error::invalid(format!("time.parse_duration: {}", e.message))),
            }
        })?,
    )?;
    t.raw_set(
        "parse",
        lua.create_function(|lua, (layout, value, loc): (String, String, LuaValue)| {
            // no zone in the value: the node's local zone (SPEC §12.3)
            let loc = location_arg(&loc)?.unwrap_or(Location::Local);
            match parse_go(&layout, &value, &loc) {
                Ok(t) => Ok((LuaValue::UserData(lua.create_userdata(t)?), LuaValue::Nil)),
                Err(m) => fail(lua, Error::invalid(m)),
            }
        })?,
    )?;
    t.raw_set(
        "fixed_zone",
        lua.create_function(|lua, (name, offset): (String, i32)| lua.create_userdata(Location::Fixed(name, offset)))?,
    )?;
    t.raw_set(
        "load_location",
        lua.create_function(|lua, name: LuaValue| {
            let LuaValue::String(name) = &name else { return Err(bad_arg(1, "load_location", "string", &name)) };
            let name = name.to_string_lossy().to_string();
            let loc = match name.as_str() {
                "" => return fail(lua, Error::invalid("empty location name")),
                "UTC" => Location::Utc,
                "Local" => Location::Local,
                other => match other.parse::<chrono_tz::Tz>() {
                    Ok(z) => Location::Zone(z),
                    Err(_) => return fail(lua, Error::not_found(format!("unknown time zone {}", wippy_runtime::Echo(other)))),
                },
            };
            Ok((LuaValue::UserData(lua.create_userdata(loc)?), LuaValue::Nil))
        })?,
    )?;

    // Primitives for the prelude's waiting functions.
    r.raw_set(
        "duration_ns",
        lua.create_function(|_, (d, f): (LuaValue, String)| match duration_arg(&d, 1, &f)? {
            Ok(ns) => Ok(ns.max(0)),
            Err(e) => Err(mlua::Error::runtime(format!("bad argument #1 to '{f}' ({})", e.message))),
        })?,
    )?;
    r.raw_set(
        "after",
        lua.create_function(|_, ns: i64| command(Command::After(StdDuration::from_nanos(ns.max(0) as u64))))?,
    )?;
    r.raw_set(
        "ticker",
        lua.create_function(|_, ns: i64| command(Command::Ticker(StdDuration::from_nanos(ns.max(1) as u64))))?,
    )?;
    r.raw_set(
        "cancel_command",
        lua.create_function(|_, id: u64| current::with(|cx, _| Ok(cx.cancel_command(wippy_runtime::CommandId(id)))))?,
    )?;
    r.raw_set(
        "time_from_nanos",
        lua.create_function(|_, v: LuaValue| {
            let nanos = match v {
                LuaValue::Integer(i) => i as i128,
                _ => now_nanos() as i128,
            };
            Ok(Time { nanos, loc: Location::Local })
        })?,
    )?;
    Ok(t)
}

/// Start a timer command for the running process; past its pending limit this raises the
/// LimitExceeded error (as running out of memory would).
fn command(cmd: Command) -> mlua::Result<u64> {
    current::with(|cx, _| match cx.try_command(cmd) {
        Ok(id) => Ok(id.0),
        Err(e) => Err(mlua::Error::external(crate::modules::errors::LuaError::new(e))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn go_layouts_round_trip() {
        let t = parse_go(RFC3339, "2024-03-05T07:08:09Z", &Location::Utc).unwrap();
        assert_eq!(t.nanos, 1709622489 * NS);
        assert_eq!(format_go(&t, RFC3339), "2024-03-05T07:08:09Z");
        assert_eq!(format_go(&t, "Mon Jan _2 15:04:05 2006"), "Tue Mar  5 07:08:09 2024");
        assert_eq!(format_go(&t, "3:04PM"), "7:08AM");
        let t2 = parse_go("2006-01-02 15:04:05.000 -07:00", "2024-03-05 10:08:09.250 +03:00", &Location::Utc).unwrap();
        assert_eq!(t2.nanos, 1709622489 * NS + 250_000_000);
        assert_eq!(format_go(&t2, "15:04:05.999 Z07:00"), "10:08:09.25 +03:00");
        assert!(parse_go("2006-01-02", "2024-13-01", &Location::Utc).is_err());
        assert!(parse_go("2006-01-02", "2024-01-01x", &Location::Utc).is_err());
        // year 0 is beyond an i64 of nanoseconds; Go's parse lands there
        let k = parse_go("3:04PM", "3:04PM", &Location::Local).unwrap();
        assert_eq!(format_go(&k, "2006-01-02 15:04"), "0000-01-01 15:04");
        let est = parse_go("15:04 MST", "10:00 EST", &Location::Utc).unwrap();
        assert_eq!(format_go(&est, "15:04 MST -0700"), "10:00 EST +0000");
    }
}
