"""The evaluation report: JSON and Markdown, and the HTML page."""
