"""Reports of the participant and group levels: tables, figures and self-contained HTML pages."""
