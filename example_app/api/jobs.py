"""Background job status."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView

from flask_backend_patterns.api import Blueprint
from flask_backend_patterns.api import envelope
from flask_backend_patterns.auth import require_permission

from ..schemas import JobSchema
from ..services import SearchService

blp = Blueprint("jobs", __name__, url_prefix="/api/jobs", description="Background jobs")


@blp.route("/<job_id>")
class JobById(MethodView):
    @require_permission("write")
    @blp.response(200, JobSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, job_id: str) -> Response:
        """A job's status: queued, started, finished (with its result) or failed (with its error)."""
        return envelope(SearchService().job(job_id).as_dict())
