"""What people look at: matplotlib figures and the self-contained HTML report."""
