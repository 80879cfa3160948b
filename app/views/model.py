"""Model: the bundle's model card (markdown) and its metrics table."""

from __future__ import annotations

import flet as ft

from app.views.common import Shell, heading, muted, tid


class ModelView:
    route = "/model"
    title = "Model"

    def __init__(self, shell: Shell):
        self.shell = shell
        self.state = shell.state
        facts = ft.Column(
            [
                ft.Row([ft.Text(k, width=110, weight=ft.FontWeight.BOLD), ft.Text(v)])
                for k, v in self.state.medication.model_facts()
            ],
            spacing=2,
        )
        columns, rows = self.state.medication.metrics_table()
        if columns:
            table: ft.Control = ft.DataTable(
                columns=[ft.DataColumn(ft.Text(c)) for c in columns],
                rows=[ft.DataRow(cells=[ft.DataCell(ft.Text(v)) for v in row]) for row in rows],
                heading_row_height=36,
                data_row_min_height=32,
                data_row_max_height=40,
            )
        else:
            table = muted("The bundle lists no metrics.")
        self.root = ft.Column(
            [
                heading("Model"),
                tid("model-facts", facts),
                heading("Metrics", 18),
                tid("model-metrics", ft.Row([table], scroll=ft.ScrollMode.AUTO)),
                ft.Divider(),
                tid(
                    "model-card",
                    ft.Markdown(
                        self.state.medication.model_card(),
                        extension_set=ft.MarkdownExtensionSet.GITHUB_WEB,
                        selectable=True,
                    ),
                ),
            ],
            spacing=12,
            scroll=ft.ScrollMode.AUTO,
            expand=True,
        )

    def refresh(self) -> None:
        pass

    def reset(self) -> None:
        pass
