"""Reading manifests: lines off the file, rows out of lines, the row rules, seen rows.

Seam: ``reader.open_manifest`` yields ``Row`` records and ``BadRow`` values in file order;
``rules`` holds the checks a row must pass and ``seen`` the duplicate-in-file detection.
"""

from __future__ import annotations
