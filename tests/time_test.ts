import assert from "node:assert/strict";
import { formatRfc3339, parseRfc3339 } from "../lib/time.ts";

Deno.test("RFC 3339 §5.6: date-times with Z, offsets, fractions and a lower-case or space separator parse to the instant Date.parse gives", () => {
  const cases: [string, string][] = [
    ["2026-11-25T03:01:10Z", "2026-11-25T03:01:10Z"],
    ["2026-11-25T03:01:10.5Z", "2026-11-25T03:01:10.500Z"],
    ["2026-11-25T03:01:10.123456789Z", "2026-11-25T03:01:10.123Z"],
    ["2026-11-25T04:31:10+01:30", "2026-11-25T03:01:10Z"],
    ["2026-11-24T23:01:10-04:00", "2026-11-25T03:01:10Z"],
    ["2026-11-25t03:01:10z", "2026-11-25T03:01:10Z"],
    ["2026-11-25 03:01:10Z", "2026-11-25T03:01:10Z"],
    ["2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"],
    ["2000-02-29T12:00:00Z", "2000-02-29T12:00:00Z"],
    ["2026-12-31T23:59:59Z", "2026-12-31T23:59:59Z"],
  ];
  for (const [text, iso] of cases) assert.equal(parseRfc3339(text), Date.parse(iso), text);
});

Deno.test("RFC 3339 §5.7: impossible dates and times are refused, not rolled over", () => {
  for (
    const text of [
      "2026-02-29T00:00:00Z", // not a leap year
      "1900-02-29T00:00:00Z", // century, not a leap year
      "2026-04-31T00:00:00Z",
      "2026-13-01T00:00:00Z",
      "2026-00-10T00:00:00Z",
      "2026-01-00T00:00:00Z",
      "2026-01-32T00:00:00Z",
      "2026-01-01T24:00:00Z",
      "2026-01-01T00:60:00Z",
      "2026-01-01T00:00:60Z",
      "2026-01-01T00:00:00+24:00",
      "2026-01-01T00:00:00+01:60",
      "2026-01-01T00:00:00", // no offset
      "2026-01-01T00:00:00.Z",
      "26-01-01T00:00:00Z",
      "tomorrow",
      "",
    ]
  ) {
    assert.equal(parseRfc3339(text), null, text);
  }
});

Deno.test("formatRfc3339() writes UTC with a fraction only when there is one, and round-trips", () => {
  assert.equal(formatRfc3339(Date.UTC(2026, 10, 25, 3, 1, 10)), "2026-11-25T03:01:10Z");
  assert.equal(formatRfc3339(Date.UTC(2026, 10, 25, 3, 1, 10, 250)), "2026-11-25T03:01:10.250Z");
  for (const ms of [0, 1_764_039_670_250, Date.UTC(2024, 1, 29, 23, 59, 59, 999)]) {
    assert.equal(parseRfc3339(formatRfc3339(ms)), ms);
  }
});
