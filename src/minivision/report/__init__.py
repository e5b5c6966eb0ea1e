"""Files a person opens: learning curves, tables, later confusion matrices and an HTML report."""
