"""Reading run directories for people: the compare table and Pareto plots (compare.py), the HTML report
(html.py with view.py, figures.py, markup.py; sweep_page.py for a sweep). Never imports train: a report
is made from what runs wrote."""
