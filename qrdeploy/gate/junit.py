"""JUnit XML of a `qrdeploy check` for CI systems: one testsuite, one testcase per threshold, a
<failure> for each threshold not met. No timestamps or hostnames, so the same result always
writes the same file."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from qrdeploy.core.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from qrdeploy.gate.run import CheckResult

SUITE = "qrdeploy check"


def junit_xml(result: CheckResult) -> bytes:
    """The JUnit XML document of a check result (UTF-8, with an XML declaration)."""
    tests, failures = str(len(result.thresholds)), str(len(result.failures))
    root = ET.Element("testsuites", name=SUITE, tests=tests, failures=failures, errors="0")
    suite = ET.SubElement(root, "testsuite", name=f"{SUITE} {result.model.path.name}",
                          tests=tests, failures=failures, errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for name, value in (("model.sha256", result.model.sha256),
                        ("reference.sha256", result.reference.sha256),
                        ("data", result.data["name"]), ("use_bound", result.policy.use_bound)):
        ET.SubElement(props, "property", name=name, value=str(value))
    for t in result.thresholds:
        case = ET.SubElement(suite, "testcase", classname="qrdeploy.gate.run", name=t.metric)
        if not t.passed:
            failure = ET.SubElement(case, "failure", message=t.line(), type="threshold")
            failure.text = t.detail
        else:
            ET.SubElement(case, "system-out").text = t.line()
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")


def write_junit(path: str | Path, result: CheckResult) -> Path:
    """Write the JUnit XML atomically."""
    return atomic_write_bytes(path, junit_xml(result))


def error_xml(model: str, message: str) -> bytes:
    """The JUnit XML of a check that could not run (exit 1): one testcase with an <error>, so a
    CI system shows the reason instead of a missing report."""
    root = ET.Element("testsuites", name=SUITE, tests="1", failures="0", errors="1")
    suite = ET.SubElement(root, "testsuite", name=f"{SUITE} {Path(model).name}", tests="1",
                          failures="0", errors="1", skipped="0")
    case = ET.SubElement(suite, "testcase", classname="qrdeploy.gate.run", name="check")
    ET.SubElement(case, "error", message=message, type="error").text = message
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")


def write_junit_error(path: str | Path, model: str, message: str) -> Path:
    """Write the error report atomically."""
    return atomic_write_bytes(path, error_xml(model, message))
