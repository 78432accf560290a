// CopyLoRA tab: only what gradio cannot express. (1) Poll the training status while the tab is shown, by clicking
// a hidden button every two seconds (the WebUI's own progress bar polls the same way; nothing runs while another
// tab is shown). (2) Put a LoRA's tag into the txt2img prompt and switch to txt2img.

const COPYLORA_POLL_MS = 2000;

function copyloraTabShown() {
    const tab = gradioApp().getElementById('tab_copylora');
    return tab !== null && tab.offsetParent !== null;
}

function copyloraPoll() {
    const button = gradioApp().getElementById('copylora_poll');
    if (button !== null && copyloraTabShown()) {
        button.click();
    }
}

onUiLoaded(function() {
    setInterval(copyloraPoll, COPYLORA_POLL_MS);
});

// Called by the "Send to txt2img" buttons with the tag shown beside them.
function copylora_send_to_txt2img(tag) {
    const prompt = gradioApp().querySelector('#txt2img_prompt textarea');
    if (prompt !== null && tag) {
        const text = prompt.value.trimEnd();
        prompt.value = text ? text + ' ' + tag : tag;
        updateInput(prompt);
    }
    switch_to_txt2img();
    return [];
}
