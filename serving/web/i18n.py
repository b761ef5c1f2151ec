"""Every label of the page in English and Simplified Chinese. Violation names come from
the taxonomy, not from here. The language is the `lang` cookie (set by the page's switch),
else the browser's Accept-Language."""

from __future__ import annotations

LANGUAGES = ("en", "zh-CN")

# key: (en, zh-CN)
LABELS: dict[str, tuple[str, str]] = {
    "app": ("gridwatch review", "gridwatch 审核"),
    "login": ("Sign in", "登录"),
    "logout": ("Sign out", "退出"),
    "username": ("User name", "用户名"),
    "password": ("Password", "密码"),
    "bad_login": ("Wrong user name or password.", "用户名或密码错误。"),
    "too_many": ("Too many failed sign-ins; try again later.", "登录失败次数过多，请稍后再试。"),
    "queue": ("Queue", "待审队列"),
    "dashboard": ("Dashboard", "统计"),
    "history": ("My history", "我的记录"),
    "admin": ("Admin", "管理"),
    "audit": ("Audit log", "审计日志"),
    "language": ("中文", "English"),
    "order": ("Order", "排序"),
    "oldest": ("Oldest first", "最早优先"),
    "score": ("Score", "置信度"),
    "highest": ("Highest score first", "置信度优先"),
    "camera": ("Camera", "摄像头"),
    "violation": ("Violation", "违规类型"),
    "any": ("any", "全部"),
    "grid": ("Grid", "网格"),
    "from": ("From", "从"),
    "to": ("To", "至"),
    "min_score": ("Min score", "最低置信度"),
    "apply": ("Apply", "应用"),
    "empty": ("No pending cases. Well done.", "没有待审案件。"),
    "loading": ("Loading…", "加载中…"),
    "matter_code": ("Matter code", "事项代码"),
    "address": ("Address", "地址"),
    "dwell": ("Dwell", "持续时间"),
    "model": ("Model", "模型"),
    "timeline": ("Occurrences", "发现记录"),
    "case_history": ("Case history", "案件审计"),
    "crop": ("Close-up", "局部放大"),
    "note": ("Note", "备注"),
    "confirm": ("Confirm", "确认"),
    "reject": ("Reject", "驳回"),
    "change_kind": ("Change kind", "更改类型"),
    "box_mode": ("Box mode", "框选模式"),
    "undo": ("Undo", "撤销"),
    "shortcuts": ("Keys", "快捷键"),
    "confirmed": ("Confirmed", "已确认"),
    "rejected": ("Rejected", "已驳回"),
    "corrected": ("Kind changed", "已更正"),
    "undone": ("Undone", "已撤销"),
    "press_z": ("Z to undo", "按 Z 撤销"),
    "reason": ("Reason", "驳回原因"),
    "false_alarm": ("False alarm", "误报"),
    "not_here": ("Not a violation here", "此处不属违规"),
    "duplicate": ("Duplicate of another case", "与其他案件重复"),
    "bad_image": ("Bad image", "图像不可用"),
    "key_confirm": ("confirm", "确认"),
    "key_reject": ("reject, then 1-4 for the reason", "驳回，再按 1-4 选原因"),
    "key_kind": ("change the kind, then its number", "更改类型，再按编号"),
    "key_nav": ("next / previous case", "下一个 / 上一个"),
    "key_box": ("box mode: arrows move, Shift+arrows resize, A adds, Tab selects, X deletes, drag draws",
                "框选：方向键移动，Shift+方向键缩放，A 新增，Tab 切换，X 删除，可拖动绘制"),
    "key_note": ("write a note (Enter to finish)", "填写备注（回车结束）"),
    "key_undo": ("undo the last decision", "撤销上一个决定"),
    "key_help": ("show these keys", "显示快捷键"),
    "key_escape": ("close a menu, leave box mode", "关闭菜单，退出框选"),
    "error": ("Something went wrong", "出错了"),
    "taken": ("Someone else is reviewing this case", "该案件正由他人审核"),
    "users": ("Users", "用户"),
    "role": ("Role", "角色"),
    "created": ("Created", "创建时间"),
    "status": ("Status", "状态"),
    "active": ("active", "启用"),
    "disabled": ("disabled", "已停用"),
    "disable": ("Disable", "停用"),
    "add_user": ("Add user", "添加用户"),
    "api_keys": ("API keys", "API 密钥"),
    "name": ("Name", "名称"),
    "prefix": ("Prefix", "前缀"),
    "revoke": ("Revoke", "吊销"),
    "add_key": ("Create key", "创建密钥"),
    "model": ("Model", "模型"),
    "model_swaps": ("models put live since start:", "启动以来上线模型数："),
    "reload_model": ("Load the model file again", "重新加载模型文件"),
    "new_key": ("New key (shown once, store it now)", "新密钥（仅显示一次，请立即保存）"),
    "cameras": ("Cameras", "摄像头"),
    "settings": ("Settings", "设置"),
    "when": ("When", "时间"),
    "who": ("Who", "操作人"),
    "what": ("What", "操作"),
    "target": ("Target", "对象"),
    "before": ("Before", "之前"),
    "after": ("After", "之后"),
    "export_csv": ("Export CSV", "导出 CSV"),
    "per_day": ("Cases per day by violation", "每日案件数（按类型）"),
    "backlog": ("Backlog", "待审积压"),
    "oldest_age": ("Oldest pending", "最早待审"),
    "precision": ("Review precision (confirmed / reviewed)", "审核准确率（确认 / 已审）"),
    "by_violation": ("By violation", "按类型"),
    "by_camera": ("By camera", "按摄像头"),
    "reviewed": ("Reviewed", "已审"),
    "latency": ("Time from first detection (median)", "自首次发现起的时间（中位数）"),
    "to_case": ("to case", "到立案"),
    "to_review": ("to review", "到审核"),
    "to_delivery": ("to delivery", "到推送"),
    "delivery": ("Delivery", "推送"),
    "pending": ("pending", "待发送"),
    "delivered": ("delivered", "已送达"),
    "failures": ("failed tries", "失败次数"),
    "dead": ("dead letters", "死信"),
    "camera_health": ("Camera health", "摄像头状态"),
    "online": ("Online", "在线"),
    "last_frame": ("Last frame", "最后一帧"),
    "fpm": ("Analysed / min", "每分钟分析帧"),
    "drops": ("Read errors", "读取错误"),
    "forbidden": ("You may not open this page.", "无权访问此页面。"),
}


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return cookie
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "en"


def labels(lang: str) -> dict[str, str]:
    index = LANGUAGES.index(lang)
    return {key: pair[index] for key, pair in LABELS.items()}
