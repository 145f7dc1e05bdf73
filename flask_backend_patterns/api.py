"""flask-smorest integration: one error envelope, one success envelope, offline docs.

``Api`` renders flask-smorest's errors with :mod:`flask_backend_patterns.errors`
(flask-smorest registers its own ``HTTPException`` handler, and the last
registration wins) and serves the Swagger UI assets from the ``swagger-ui-bundle``
package, so ``/docs`` works with no internet access.

``Blueprint`` documents every ``@blp.response(status, Schema)`` as the success
envelope ``{"success": true, "data": ..., "meta": ...}`` and wraps what a view
returns in it.
"""

from __future__ import annotations

import copy
import functools
import threading
import typing as t
import weakref

import flask_smorest
import marshmallow as ma
from flask import Blueprint as FlaskBlueprint
from flask import Flask
from flask import g
from flask import request
from flask import Response
from marshmallow import missing
from marshmallow import utils as ma_utils
from marshmallow.decorators import POST_DUMP
from marshmallow.decorators import PRE_DUMP
from werkzeug.exceptions import HTTPException

from .errors import handle_http_exception
from .errors import json_response
from .errors import UnsupportedMediaTypeError
from .repository import Page

#: name of the OpenAPI security scheme of bearer JWTs, registered by :class:`Api`.
BEARER_SCHEME = "bearerAuth"


class ErrorEnvelopeSchema(ma.Schema):
    """The error envelope (documentation only)."""

    success = ma.fields.Boolean(required=True, metadata={"example": False})
    error = ma.fields.String(required=True, metadata={"description": "Human readable message"})
    code = ma.fields.String(required=True, metadata={"description": "Machine code, e.g. not_found"})
    request_id = ma.fields.String(allow_none=True, metadata={"description": "Same as X-Request-ID"})
    details = ma.fields.Dict(
        keys=ma.fields.String(), metadata={"description": "Field name -> list of messages"}
    )


class PageMetaSchema(ma.Schema):
    """Pagination metadata of a list response."""

    total = ma.fields.Integer(allow_none=True, metadata={"description": "Rows matching the filters"})
    limit = ma.fields.Integer(required=True)
    offset = ma.fields.Integer(allow_none=True, metadata={"description": "null on cursor pages"})
    next_cursor = ma.fields.String(
        allow_none=True, metadata={"description": "Opaque cursor of the next page; null on the last"}
    )


_ENVELOPES: dict[tuple[type[ma.Schema], bool, frozenset[str] | None], type[ma.Schema]] = {}


def envelope_schema(schema: ma.Schema) -> type[ma.Schema]:
    """The success-envelope schema around ``schema`` (a list one if ``schema.many``)."""
    only = frozenset(schema.only) if schema.only else None
    key = (type(schema), bool(schema.many), only)
    if key not in _ENVELOPES:
        inner = type(schema)(only=only) if only else type(schema)()
        data: ma.fields.Field[t.Any] = (
            ma.fields.List(ma.fields.Nested(inner), required=True)
            if schema.many
            else ma.fields.Nested(inner, required=True)
        )
        fields: dict[str, ma.fields.Field[t.Any]] = {
            "success": ma.fields.Boolean(required=True, metadata={"example": True}),
            "data": data,
        }
        name = type(schema).__name__.removesuffix("Schema")
        if schema.many:
            fields["meta"] = ma.fields.Nested(PageMetaSchema, required=True)
            name += "List"
        _ENVELOPES[key] = ma.Schema.from_dict(fields, name=f"{name}Envelope")
    return _ENVELOPES[key]


def set_meta(meta: t.Mapping[str, t.Any]) -> None:
    """Attach ``meta`` to the success envelope of the current response."""
    g._fbp_meta = dict(meta)


def page_meta(page: Page[t.Any]) -> dict[str, t.Any]:
    """The ``meta`` of a list envelope (see :class:`PageMetaSchema`) for one page."""
    return {"total": page.total, "limit": page.limit, "offset": page.offset, "next_cursor": page.next_cursor}


def etag_matches(header: str | None, etag: str, *, weak: bool = False) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` value (comma-separated tags or ``*``)
    matches ``etag``.

    ``weak=False`` is the strong comparison ``If-Match`` uses (a ``W/`` tag never
    matches); ``weak=True`` the weak one of ``If-None-Match`` (RFC 9110, 8.8.3.2).
    """
    if not header:
        return False
    for tag in (part.strip() for part in header.split(",")):
        if tag == "*":
            return True
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _success_payload(data: t.Any, meta: t.Mapping[str, t.Any] | None) -> dict[str, t.Any]:
    payload: dict[str, t.Any] = {"success": True, "data": data}
    if meta is not None:
        payload["meta"] = meta
    return payload


def envelope(
    data: t.Any,
    *,
    meta: t.Mapping[str, t.Any] | None = None,
    status: int = 200,
    headers: t.Mapping[str, str] | None = None,
) -> Response:
    """Build a success-envelope response from already serialised ``data``."""
    return json_response(_success_payload(data, meta), status, headers)


def dump(schema: ma.Schema, obj: t.Any, *, many: bool | None = None) -> t.Any:
    """``schema.dump(obj, many=many)``, a good deal faster for the schemas APIs mostly have.

    A schema whose every dumped field is a plain ``String``, ``Integer``, ``Float``,
    ``DateTime`` (a named format: ISO, RFC or a timestamp) or a ``Nested`` such schema, with
    no ``dump_default``, no dotted ``attribute`` and no dump hooks, is compiled once per
    schema instance into a list of (key, source, converter) and dumped by that: what
    marshmallow does for such a schema, without its per-field calls. Anything else (another
    field type, a subclass, a hook, an overridden ``get_attribute``, a schema nested in
    itself) is dumped by ``schema.dump`` itself, so the result is always what marshmallow
    gives. Do not change a schema's fields after its first dump.
    """
    plan = _dump_plan(schema)
    if plan is None:
        return schema.dump(obj, many=many)
    if (many if many is not None else schema.many) and obj is not None:
        return [_dump_one(plan, item) for item in obj]
    return _dump_one(plan, obj)  # None with many=True too: marshmallow dumps it as one object


#: per dumped field: its key, the attribute it reads, and how its value is converted:
#: _TEXT (as String) or a callable (a number type, DateTime's format function, a Nested).
_Plan = list[tuple[str, str, t.Any]]
_TEXT = "text"
#: per thread, the schema classes being compiled (a Nested leading back to one falls back).
_compiling = threading.local()
#: schema -> its compiled plan, or None where marshmallow must dump it itself.
_PLANS: weakref.WeakKeyDictionary[ma.Schema, _Plan | None] = weakref.WeakKeyDictionary()


def _dump_plan(schema: ma.Schema) -> _Plan | None:
    try:
        return _PLANS[schema]
    except KeyError:
        pass
    plan = _compile(schema)
    _PLANS[schema] = plan
    return plan


def _compile(schema: ma.Schema) -> _Plan | None:
    kind = type(schema)
    compiling: set[type[ma.Schema]] = getattr(_compiling, "kinds", None) or set()
    if kind in compiling:
        return None  # a schema nested in itself: marshmallow follows it as deep as the data
    _compiling.kinds = compiling | {kind}
    try:
        return _compile_fields(schema)
    finally:
        _compiling.kinds = compiling


def _compile_fields(schema: ma.Schema) -> _Plan | None:
    kind = type(schema)
    if (
        kind.dump is not ma.Schema.dump
        or kind._serialize is not ma.Schema._serialize
        or kind.get_attribute is not ma.Schema.get_attribute
        or schema.dict_class is not dict
        or schema._hooks[PRE_DUMP]
        or schema._hooks[POST_DUMP]
    ):
        return None
    plan: _Plan = []
    for name, field in schema.dump_fields.items():
        source = name if field.attribute is None else field.attribute
        if "." in source or field.dump_default is not missing:
            return None
        convert = _converter(field)
        if convert is None:
            return None
        plan.append((name if field.data_key is None else field.data_key, source, convert))
    return plan


def _converter(field: ma.fields.Field[t.Any]) -> t.Any:
    """What ``field._serialize`` does with a value that is not None (None stays None for
    every field type :func:`dump` knows); None for the other field types."""
    kind = type(field)
    if kind.serialize is not ma.fields.Field.serialize or kind.get_value is not ma.fields.Field.get_value:
        return None
    if kind is ma.fields.String:
        return _TEXT
    if kind in (ma.fields.Integer, ma.fields.Float) and not field.as_string:  # type: ignore[attr-defined]
        return field.num_type  # type: ignore[attr-defined]
    if kind is ma.fields.DateTime:
        # The function marshmallow calls (dt.datetime.isoformat for "iso"), not a method of
        # the value: a subclass's own isoformat, or a date, is treated as marshmallow does.
        return field.SERIALIZATION_FUNCS.get(field.format or field.DEFAULT_FORMAT)  # type: ignore[attr-defined]
    if kind is ma.fields.Nested:
        try:
            nested = field.schema  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001  (an unknown schema name: marshmallow raises when it dumps one)
            return None
        inner = _dump_plan(nested)
        if inner is None:
            return None
        if nested.many or field.many:  # type: ignore[attr-defined]
            return lambda value: [_dump_one(inner, item) for item in value]
        return lambda value: _dump_one(inner, value)
    return None


def _dump_one(plan: _Plan, obj: t.Any) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {}
    keyed = hasattr(obj, "__getitem__")
    for key, source, convert in plan:
        if keyed:  # as marshmallow reads: the item first, then the attribute
            try:
                value = obj[source]
            except (KeyError, IndexError, TypeError, AttributeError):
                value = getattr(obj, source, missing)
        else:
            value = getattr(obj, source, missing)
        if value is missing:
            continue
        if value is None:
            out[key] = None
        elif convert is _TEXT:
            out[key] = value if type(value) is str else ma_utils.ensure_text_type(value)
        else:
            out[key] = convert(value)
    return out


def empty_response(status: int = 204, headers: t.Mapping[str, str] | None = None) -> Response:
    """A response with no body (204, 304), without the ``Content-Type`` werkzeug would add."""
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    """A flask-smorest ``Blueprint`` whose responses use the success envelope and whose
    argument validation errors are documented (and sent) as 400, not webargs' 422."""

    def arguments(self, schema: t.Any, *, error_status_code: int = 400, **kwargs: t.Any) -> t.Any:
        """flask-smorest's ``arguments``; a JSON body that is not JSON is a 415, not a 400.

        A schema class is instantiated once here: webargs would build a new instance on
        every request (in a list endpoint, that was a tenth of the request).
        """
        if isinstance(schema, type) and issubclass(schema, ma.Schema):
            schema = schema()
        parse = super().arguments(schema, error_status_code=error_status_code, **kwargs)
        if kwargs.get("location", "json") != "json":
            return parse

        def decorator(func: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
            parsed = parse(func)

            @functools.wraps(parsed)
            def wrapper(*args: t.Any, **kw: t.Any) -> t.Any:
                # webargs would read a form or an empty body as {} and report missing
                # fields; the client's real mistake is the media type.
                if not request.is_json:
                    raise UnsupportedMediaTypeError()
                return parsed(*args, **kw)

            # A copy: the doc dict is shared with the wrapped function (as flask-smorest does).
            apidoc = copy.deepcopy(getattr(parsed, "_apidoc", {}))
            apidoc.setdefault("response", {}).setdefault("responses", {}).setdefault(415, []).append(
                "UNSUPPORTED_MEDIA_TYPE"
            )
            wrapper._apidoc = apidoc  # type: ignore[attr-defined]
            return wrapper

        return decorator

    def _store_endpoint_docs(
        self, endpoint: str, obj: t.Any, parameters: t.Any, tags: t.Any, **options: t.Any
    ) -> None:
        # Views guarded by flask_backend_patterns.auth carry their requirement: document
        # the bearer scheme and the 401 (and 403) they answer.
        super()._store_endpoint_docs(endpoint, obj, parameters, tags, **options)
        for method, doc in self._docs[endpoint].items():
            if method == "parameters":
                continue
            func = getattr(obj, method, None) if isinstance(obj, type) else obj
            requirement = getattr(func, "_fbp_auth", None)
            if not requirement:
                continue
            schemes: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}]
            if not requirement.get("required"):
                schemes.append({})  # the token is optional
            doc.setdefault("manual_doc", {})["security"] = schemes
            responses = doc.setdefault("response", {}).setdefault("responses", {})
            responses.setdefault(401, []).append("UNAUTHORIZED")
            if requirement.get("permissions") or requirement.get("roles"):
                responses.setdefault(403, []).append("FORBIDDEN")

    def _make_doc_response_schema(self, schema: t.Any) -> t.Any:
        if isinstance(schema, ma.Schema):
            return envelope_schema(schema)
        return schema

    def _prepare_response_content(self, data: t.Any) -> t.Any:
        return _success_payload(data, g.pop("_fbp_meta", None))


class Api(flask_smorest.Api):  # type: ignore[misc]
    """flask-smorest's ``Api`` with the error envelope and offline Swagger UI.

    When ``OPENAPI_SWAGGER_UI_PATH`` is set and ``OPENAPI_SWAGGER_UI_URL`` is not, the
    UI's assets are served from the installed ``swagger-ui-bundle`` package under
    ``<OPENAPI_URL_PREFIX>/docs-assets/``.
    """

    ERROR_SCHEMA = ErrorEnvelopeSchema

    def init_app(self, app: Flask, *, spec_kwargs: dict[str, t.Any] | None = None) -> None:
        prefix = app.config.get("OPENAPI_URL_PREFIX")
        if (
            app.config.get("OPENAPI_SWAGGER_UI_PATH") is not None
            and prefix is not None
            and app.config.get("OPENAPI_SWAGGER_UI_URL") is None
        ):
            from swagger_ui_bundle import swagger_ui_path

            url = "/" + "/".join(p for p in (prefix.strip("/"), "docs-assets") if p)
            app.register_blueprint(
                FlaskBlueprint(
                    "backend_patterns_docs_assets",
                    __name__,
                    static_folder=str(swagger_ui_path),
                    static_url_path=url,
                )
            )
            app.config["OPENAPI_SWAGGER_UI_URL"] = url + "/"
        super().init_app(app, spec_kwargs=spec_kwargs)
        if BEARER_SCHEME not in self.spec.components.security_schemes:
            self.spec.components.security_scheme(
                BEARER_SCHEME, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            )

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        """Render flask-smorest's errors in the error envelope."""
        return handle_http_exception(error)
